//! The result of a command run in a guest, whatever the channel.

/// stdout, stderr and exit status of one guest command, kept apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Bytes written to stdout.
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    pub stderr: Vec<u8>,
    /// Exit status; 128+N when killed by signal N (as a shell reports it).
    pub status: i32,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Where streamed output goes while a command runs.
pub trait Sink: Send {
    /// A chunk of stdout.
    fn stdout(&mut self, data: &[u8]);
    /// A chunk of stderr.
    fn stderr(&mut self, data: &[u8]);
}

/// Streams to the host's own stdout and stderr.
#[derive(Debug, Default)]
pub struct HostStdio;

impl Sink for HostStdio {
    fn stdout(&mut self, data: &[u8]) {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(data);
        let _ = o.flush();
    }
    fn stderr(&mut self, data: &[u8]) {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(data);
        let _ = e.flush();
    }
}
