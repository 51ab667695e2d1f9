//! `xdriver-webapp`: the example systems' small web application, like the
//! seed's webapp. It answers every request with
//! "Simple test webapp listening on port: N".
//!
//! - `PORT` (or `--port N`): the TCP port on 0.0.0.0.
//! - Foreground by default. With `-D` it is a proper daemon: it forks,
//!   starts a new session, forks again, binds, writes `PID_FILE`, and only
//!   then lets the original parent exit (status 0 when it serves, 1 when it
//!   could not), so "the start command returned" means "ready".
//! - Readiness notification when supervised: `READY=1` on `NOTIFY_SOCKET`
//!   (systemd `Type=notify`), a newline on the descriptor named by
//!   `READY_FD` (s6's notification-fd).
//! - `GREETING` adds a line to the page; `CONFIG_FILE` is served at
//!   `/config`; `/whoami` answers the uid the process runs as.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::process::exit;

fn die(msg: &str) -> ! {
    eprintln!("xdriver-webapp: {msg}");
    exit(1)
}

struct Config {
    port: u16,
    daemon: bool,
}

fn args() -> Config {
    let mut port = std::env::var("PORT").ok();
    let mut daemon = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-D" => daemon = true,
            "--port" => port = it.next(),
            "-h" | "--help" => {
                println!("usage: xdriver-webapp [-D] [--port N]   (env: PORT, PID_FILE, GREETING, CONFIG_FILE, NOTIFY_SOCKET, READY_FD)");
                exit(0)
            }
            other => die(&format!("unknown argument `{other}`")),
        }
    }
    let port = port.unwrap_or_else(|| die("no port: set PORT or pass --port"));
    let port = port.trim().parse().unwrap_or_else(|_| die(&format!("PORT `{port}` is not a port number")));
    Config { port, daemon }
}

fn page(port: u16, path: &str) -> (u16, String) {
    match path {
        "/config" => match std::env::var("CONFIG_FILE").map(std::fs::read_to_string) {
            Ok(Ok(text)) => (200, text),
            Ok(Err(e)) => (500, format!("cannot read CONFIG_FILE: {e}\n")),
            Err(_) => (404, "no CONFIG_FILE\n".into()),
        },
        // SAFETY: getuid has no preconditions.
        "/whoami" => (200, format!("{}\n", unsafe { libc::getuid() })),
        _ => {
            let mut body = format!(
                "<!DOCTYPE html>\n<html>\n  <head>\n    <title>Simple test webapp</title>\n  </head>\n  <body>\n    Simple test webapp listening on port: {port}\n"
            );
            if let Ok(g) = std::env::var("GREETING") {
                body.push_str(&format!("    Greeting: {g}\n"));
            }
            body.push_str("  </body>\n</html>\n");
            (200, body)
        }
    }
}

fn serve_one(mut s: TcpStream, port: u16) {
    let mut reader = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    // Drain the headers.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let (code, body) = page(port, &path);
    let reason = if code == 200 { "OK" } else { "Error" };
    let _ = write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn notify_ready() {
    if let Ok(path) = std::env::var("NOTIFY_SOCKET") {
        let sock = std::os::unix::net::UnixDatagram::unbound();
        if let Ok(sock) = sock {
            // Abstract sockets start with '@' (Linux only; systemd is
            // Linux's, so elsewhere NOTIFY_SOCKET is a path if set at all).
            #[cfg(target_os = "linux")]
            let res = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|a| sock.send_to_addr(b"READY=1\n", &a))
            } else {
                sock.send_to(b"READY=1\n", &path)
            };
            #[cfg(not(target_os = "linux"))]
            let res = sock.send_to(b"READY=1\n", &path);
            if let Err(e) = res {
                eprintln!("xdriver-webapp: sd_notify: {e}");
            }
        }
    }
    if let Some(fd) = std::env::var("READY_FD").ok().and_then(|v| v.parse::<i32>().ok()) {
        // SAFETY: the supervisor handed us this descriptor to write once and close.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(b"\n");
    }
}

fn run(listener: TcpListener, port: u16) -> ! {
    notify_ready();
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                std::thread::spawn(move || serve_one(s, port));
            }
            Err(e) => eprintln!("xdriver-webapp: accept: {e}"),
        }
    }
    exit(0)
}

fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| die(&format!("cannot listen on port {port}: {e}")))
}

fn write_pid_file() {
    if let Ok(p) = std::env::var("PID_FILE") {
        if let Err(e) = std::fs::write(&p, format!("{}\n", std::process::id())) {
            die(&format!("cannot write PID_FILE {p}: {e}"));
        }
    }
}

fn daemonize(port: u16) -> ! {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        die("pipe failed");
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: single-threaded here; the child only continues this program.
    match unsafe { libc::fork() } {
        -1 => die("fork failed"),
        0 => {}
        _ => {
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(wr) };
            // SAFETY: rd is the pipe's read end, owned from here on.
            let mut r = unsafe { std::fs::File::from_raw_fd(rd) };
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            exit(if buf.starts_with(b"ok") { 0 } else { 1 })
        }
    }
    // SAFETY: plain syscalls in the (single-threaded) child.
    unsafe {
        libc::close(rd);
        libc::setsid();
        match libc::fork() {
            -1 => die("second fork failed"),
            0 => {}
            _ => libc::_exit(0),
        }
    }
    let listener = bind(port);
    write_pid_file();
    // SAFETY: redirecting std descriptors to /dev/null; paths are valid C strings.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        libc::chdir(c"/".as_ptr());
    }
    // SAFETY: wr is the pipe's write end; dropping the File closes it, which
    // releases the waiting parent.
    let mut w = unsafe { std::fs::File::from_raw_fd(wr) };
    let _ = w.write_all(b"ok");
    drop(w);
    run(listener, port)
}

fn main() {
    let cfg = args();
    if cfg.daemon {
        daemonize(cfg.port);
    }
    let listener = bind(cfg.port);
    write_pid_file();
    run(listener, cfg.port)
}
