//! The serial console: QEMU logs every byte to `serial.log` in the run
//! directory; xdriver also reads the stream to wait for text on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::bytes::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::watch;

/// Bytes of console output kept in memory (the log file keeps everything).
const KEEP: usize = 4 << 20;

#[derive(Debug, Default)]
struct Buf {
    data: Vec<u8>,
    /// Offset of `data[0]` in the whole stream.
    base: usize,
}

/// A console wait that ended without a match.
#[derive(Debug, thiserror::Error)]
#[error("no console output matched /{pattern}/ within {timeout:?}")]
pub struct ConsoleTimeout {
    /// The pattern.
    pub pattern: String,
    /// How long it waited.
    pub timeout: Duration,
}

/// The serial console of one VM.
#[derive(Debug)]
pub struct Console {
    buf: Arc<Mutex<Buf>>,
    grew: watch::Receiver<usize>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    cursor: Mutex<usize>,
}

impl Console {
    /// Starts reading the console stream QEMU connected with.
    pub fn start(stream: UnixStream) -> Console {
        let (mut r, w) = stream.into_split();
        let buf: Arc<Mutex<Buf>> = Arc::default();
        let (tx, grew) = watch::channel(0usize);
        let b = buf.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 16384];
            let mut total = 0usize;
            while let Ok(n) = r.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                total += n;
                {
                    let mut g = b.lock().expect("console lock");
                    g.data.extend_from_slice(&chunk[..n]);
                    if g.data.len() > KEEP {
                        let cut = g.data.len() - KEEP / 2;
                        g.data.drain(..cut);
                        g.base += cut;
                    }
                }
                let _ = tx.send(total);
            }
        });
        Console { buf, grew, writer: tokio::sync::Mutex::new(w), cursor: Mutex::new(0) }
    }

    /// Waits until output written since the previous successful wait (or
    /// since boot) matches `re`; returns the matched text. Output that
    /// arrived earlier counts, so a message printed before the call is found.
    pub async fn wait_for_text(&self, re: &Regex, timeout: Duration) -> Result<String, ConsoleTimeout> {
        let mut grew = self.grew.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let g = self.buf.lock().expect("console lock");
                let mut cur = self.cursor.lock().expect("cursor lock");
                let from = cur.saturating_sub(g.base).min(g.data.len());
                if let Some(m) = re.find(&g.data[from..]) {
                    *cur = g.base + from + m.end();
                    return Ok(String::from_utf8_lossy(m.as_bytes()).into_owned());
                }
            }
            let timed_out = || ConsoleTimeout { pattern: re.as_str().to_string(), timeout };
            match tokio::time::timeout_at(deadline, grew.changed()).await {
                Ok(Ok(())) => continue,
                // The stream ended: nothing more will come.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(timed_out());
                }
                Err(_) => return Err(timed_out()),
            }
        }
    }

    /// Sends bytes to the console (as typed on the serial line).
    pub async fn send(&self, data: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(data).await
    }

    /// The last `lines` lines of console output.
    pub fn tail(&self, lines: usize) -> String {
        let g = self.buf.lock().expect("console lock");
        tail_lines(&g.data, lines)
    }
}

/// The last `n` lines of `data`, lossily decoded, carriage returns dropped.
pub fn tail_lines(data: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(data).replace('\r', "");
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_match_from_the_cursor_on() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let c = Console::start(a);
        b.write_all(b"boot: one\r\nlogin: ").await.expect("write");
        let re = Regex::new("login: ").expect("re");
        assert_eq!(c.wait_for_text(&re, Duration::from_secs(5)).await.expect("match"), "login: ");
        // the same text is not matched twice
        assert!(c.wait_for_text(&re, Duration::from_millis(100)).await.is_err());
        b.write_all(b"\r\nlogin: ").await.expect("write");
        assert!(c.wait_for_text(&re, Duration::from_secs(5)).await.is_ok());
        assert_eq!(c.tail(2), "boot: one\nlogin: \nlogin: ".lines().skip(1).collect::<Vec<_>>().join("\n"));
    }
}
