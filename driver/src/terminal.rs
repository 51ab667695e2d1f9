//! The host terminal: size and raw mode for interactive shells, and who
//! handles its Ctrl-C.

/// Set while a command handles SIGINT/SIGTERM itself (`run --keep`, a VM
/// kept by `test --keep`, a Python prompt), so the binary's global handler
/// leaves its VM to it.
pub static HANDLES_SIGNALS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the running command handles SIGINT/SIGTERM itself.
pub fn handles_signals() -> bool {
    HANDLES_SIGNALS.load(std::sync::atomic::Ordering::SeqCst)
}

/// (columns, rows) of the controlling terminal, 80x24 if unknown.
pub fn size() -> (u32, u32) {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return (ws.ws_col.into(), ws.ws_row.into());
        }
    }
    (80, 24)
}

/// Puts stdin's terminal in raw mode until dropped (no-op when stdin is
/// not a terminal).
#[derive(Debug)]
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    /// Enters raw mode.
    pub fn enter() -> RawMode {
        // SAFETY: termios calls on fd 0 with structs we own.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return RawMode { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes saved in `enter`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            }
        }
    }
}
