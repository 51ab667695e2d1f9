//! Template rendering (minijinja, Jinja2 syntax) with errors that point
//! at the spec string the template came from. Undefined names are errors.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

use super::error::{Locator, SpecError};

/// A template environment bound to one spec file.
pub struct Templates<'a> {
    env: Environment<'static>,
    loc: &'a Locator,
    /// Strings are final already (a Nix spec): nothing is rendered.
    literal: bool,
}

impl<'a> Templates<'a> {
    /// Strict (undefined names fail), blocks trimmed, trailing newline kept.
    pub fn new(loc: &'a Locator, literal: bool) -> Templates<'a> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python's str/dict/list methods (`name.startswith('redis')`,
        // `.upper()`, `.items()`), which Jinja users write and Jinja2
        // runs: minijinja's own compatibility layer.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        Templates { env, loc, literal }
    }

    fn err(&self, span: std::ops::Range<usize>, what: &str, e: minijinja::Error) -> SpecError {
        let mut msg = format!("{what}: {}", e.kind());
        if let Some(d) = e.detail() {
            msg.push_str(&format!(": {d}"));
        }
        if let Some(l) = e.line() {
            if l > 1 {
                msg.push_str(&format!(" (template line {l})"));
            }
        }
        self.loc.at(span, msg)
    }

    /// Renders one template string.
    pub fn render(&self, src: &str, ctx: &Value, span: std::ops::Range<usize>) -> Result<String, SpecError> {
        if self.literal || (!src.contains("{{") && !src.contains("{%")) {
            return Ok(src.to_string());
        }
        self.env.render_str(src, ctx).map_err(|e| self.err(span, &format!("template `{}`", shorten(src)), e))
    }

    /// Renders a config file template.
    pub fn render_file(&self, src: &str, ctx: &Value, span: std::ops::Range<usize>, path: &str) -> Result<String, SpecError> {
        if self.literal {
            return Ok(src.to_string());
        }
        self.env.render_str(src, ctx).map_err(|e| self.err(span, &format!("config file {path}"), e))
    }

    /// Evaluates an expression (for `if` and `for`).
    pub fn eval(&self, expr: &str, ctx: &Value, span: std::ops::Range<usize>) -> Result<minijinja::Value, SpecError> {
        if self.literal {
            return Err(self.loc.at(span, format!("`{expr}`: `if` and `for` are for TOML specs; in Nix, compute the steps")));
        }
        let compiled = self.env.compile_expression(expr).map_err(|e| self.err(span.clone(), &format!("expression `{expr}`"), e))?;
        compiled.eval(ctx).map_err(|e| self.err(span, &format!("expression `{expr}`"), e))
    }

    /// Renders every string inside a TOML value; other scalars pass through.
    pub fn render_value(&self, v: &toml::Value, ctx: &Value, span: std::ops::Range<usize>) -> Result<Value, SpecError> {
        Ok(match v {
            toml::Value::String(s) => Value::String(self.render(s, ctx, span)?),
            toml::Value::Array(a) => Value::Array(a.iter().map(|x| self.render_value(x, ctx, span.clone())).collect::<Result<_, _>>()?),
            toml::Value::Table(t) => {
                let mut m = serde_json::Map::new();
                for (k, x) in t {
                    m.insert(k.clone(), self.render_value(x, ctx, span.clone())?);
                }
                Value::Object(m)
            }
            other => serde_json::to_value(other).unwrap_or(Value::Null),
        })
    }
}

fn shorten(s: &str) -> String {
    let one = s.replace('\n', " ");
    if one.chars().count() > 60 {
        format!("{}…", one.chars().take(60).collect::<String>())
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_methods_render_as_jinja2_renders_them() {
        let loc = Locator::new(std::path::Path::new("x.toml"), "name = 'x'\n");
        let t = Templates::new(&loc, false);
        let ctx = serde_json::json!({ "instanceName": "redis-primary", "ports": { "a": 1 } });
        let out = t.render("{{ instanceName.startswith('redis') }} {{ instanceName.upper() }} {{ instanceName.split('-')[1] }}", &ctx, 0..1).expect("renders");
        assert_eq!(out, "True REDIS-PRIMARY primary");
        let out = t.render("{% for k, v in ports.items() %}{{ k }}={{ v }}{% endfor %}", &ctx, 0..1).expect("renders");
        assert_eq!(out, "a=1");
        // A method Python's str does not have is still an error, where written.
        let e = t.render("{{ instanceName.frobnicate() }}", &ctx, 0..1).expect_err("unknown method");
        assert!(e.to_string().contains("unknown method"), "{e}");
    }
}
