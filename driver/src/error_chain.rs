//! An error with its causes, as one message (for the CLI, cell results
//! and reports alike).

/// An error and its sources, one per line (a source already quoted in the
/// message above it is not repeated).
pub fn chain_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let t = e.to_string();
        if !s.contains(&t) {
            s.push_str("\n  caused by: ");
            s.push_str(&t);
        }
        cur = e.source();
    }
    s
}
