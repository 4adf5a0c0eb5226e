//! A static file server for report folders on 127.0.0.1 (`tpv report --serve`, `tpv demo`).
//!
//! Hand-written because it is small and its limits are the point: the request target is
//! percent-decoded, normalised and checked before the file system is touched; only regular files
//! inside the root are served (symlinks resolved, then checked again); the request head is capped
//! at [`MAX_HEAD`] bytes and must arrive within [`HEAD_DEADLINE`] (an idle or trickling client is
//! dropped), at most [`MAX_CONNECTIONS`] are served at once, and a request naming another host
//! (a DNS-rebinding page) is refused. Files are streamed, never read whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The most bytes of a request line and headers together (browsers send a few hundred).
pub const MAX_HEAD: usize = 16 * 1024;
/// The whole request head must arrive within this time (a browser sends it at once).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves `root` on 127.0.0.1:`port` until the process is stopped (a busy port falls back to a
/// free one; the printed URL is the one to open).
pub fn serve(root: &Path, port: u16) -> Result<()> {
    if !root.join("index.html").is_file() {
        bail!("{} has no index.html", root.display());
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("127.0.0.1:{port} is not available ({e}); using a free port");
            TcpListener::bind(("127.0.0.1", 0)).context("binding a port on 127.0.0.1")?
        }
    };
    let addr = listener.local_addr()?;
    println!("serving {} at http://{addr}/ (Ctrl-C stops)", root.display());
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = reply(&mut stream, "503 Service Unavailable", "busy\n");
            continue;
        }
        let root = root.clone();
        let active = Arc::clone(&active);
        let port = addr.port();
        std::thread::spawn(move || {
            if let Err(e) = respond(&mut stream, &root, port) {
                tracing::debug!("request failed: {e}");
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// A short answer, written in one piece (a `write!` to the socket sends each formatted part as
/// its own segment, and a client cut off by the close may see only the first).
fn reply(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes())
}

/// Closes after an answer to a client that is still sending (a head over the limit): the write
/// side first, then a bounded drain, so that the close does not reset the connection before the
/// client has read the answer.
fn close_gently(stream: &mut TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = std::io::copy(&mut stream.take(1 << 20), &mut std::io::sink());
}

/// The request head (request line and headers) up to the blank line, at most [`MAX_HEAD`] bytes
/// within [`HEAD_DEADLINE`]; `None` when it is longer, an error when it is late.
fn read_head(stream: &TcpStream) -> std::io::Result<Option<Vec<String>>> {
    let deadline = std::time::Instant::now() + HEAD_DEADLINE;
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64 + 1));
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        // Each read may wait only for what is left of the deadline: a client trickling a byte
        // at a time cannot hold the connection longer.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        reader.get_ref().get_ref().set_read_timeout(Some(left))?;
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        total += n;
        if total > MAX_HEAD {
            return Ok(None);
        }
        if n == 0 || !line.ends_with(b"\n") {
            // The client stopped mid-head.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if text.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(text);
    }
}

fn respond(stream: &mut TcpStream, root: &Path, port: u16) -> Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let Some(head) = read_head(stream)? else {
        reply(
            stream,
            "431 Request Header Fields Too Large",
            "request head too large\n",
        )?;
        close_gently(stream);
        return Ok(());
    };
    if !host_is_local(&head, port) {
        reply(
            stream,
            "403 Forbidden",
            "this server answers requests for 127.0.0.1 and localhost only\n",
        )?;
        return Ok(());
    }
    let mut parts = head.first().map(String::as_str).unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        reply(stream, "405 Method Not Allowed", "GET or HEAD only\n")?;
        return Ok(());
    }
    let Some(rel) = request_path(target) else {
        reply(stream, "400 Bad Request", "bad request target\n")?;
        return Ok(());
    };
    let Some((file, len)) = resolve(root, &rel) else {
        reply(stream, "404 Not Found", "not found\n")?;
        return Ok(());
    };
    let mut f = std::fs::File::open(&file)?;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        content_type(&file),
    );
    stream.write_all(head.as_bytes())?;
    if method == "GET" {
        std::io::copy(&mut (&mut f).take(len), stream)?;
    }
    Ok(())
}

/// Whether the request's `Host` header names this server (`127.0.0.1`, `localhost` or `[::1]`,
/// with this port or none). A page on another site that rebinds its name to 127.0.0.1 sends its
/// own name here, so it cannot read the report through the browser. A request without a `Host`
/// header (HTTP/1.0 tools) is local by construction: the socket only listens on 127.0.0.1.
pub fn host_is_local(head: &[String], port: u16) -> bool {
    let host = head.iter().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim().to_ascii_lowercase())
    });
    let Some(host) = host else { return true };
    let (name, host_port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() && !p.contains(']') => (n, Some(p)),
        _ => (host.as_str(), None),
    };
    let port_ok = host_port.is_none_or(|p| p.parse::<u16>() == Ok(port));
    port_ok && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// The file a request names under `root`: decoded segments joined under the root (a directory
/// means its index.html), resolved through any symlink, and served only when it is a regular file
/// still inside the root.
fn resolve(root: &Path, rel: &[String]) -> Option<(PathBuf, u64)> {
    let mut path = root.to_path_buf();
    path.extend(rel);
    let mut real = path.canonicalize().ok()?;
    if real.is_dir() {
        real = real.join("index.html").canonicalize().ok()?;
    }
    if !real.starts_with(root) {
        return None;
    }
    let meta = std::fs::metadata(&real).ok()?;
    meta.is_file().then_some((real, meta.len()))
}

/// The path segments of a request target (`/a/b%20c.json?x#y` → `["a", "b c.json"]`):
/// percent-decoded as UTF-8, empty and `.` segments dropped; `None` for anything that is not a
/// plain relative path once decoded (`..`, a NUL or control character, a backslash, a bad escape).
pub fn request_path(target: &str) -> Option<Vec<String>> {
    let path = target.split(['?', '#']).next()?;
    if !path.starts_with('/') {
        return None;
    }
    let mut out = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode(raw)?;
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." || seg.contains(['/', '\\']) || seg.chars().any(char::is_control) {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "css" => "text/css; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "md" | "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_decode_to_plain_segments_or_nothing() {
        let p = |t: &str| request_path(t);
        assert_eq!(p("/"), Some(vec![]));
        assert_eq!(p("/a/b.json?x=1#f"), Some(vec!["a".into(), "b.json".into()]));
        assert_eq!(p("/a%20b.txt"), Some(vec!["a b.txt".into()]));
        assert_eq!(p("/%C3%A9t%C3%A9.json"), Some(vec!["été.json".into()]));
        assert_eq!(p("//a/./b"), Some(vec!["a".into(), "b".into()]));
        for bad in [
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E/%2e%2e/etc/passwd",
            "/a%2f..%2f..%2fx",
            "/a%5c..",
            "/a%00b",
            "/a%0ab",
            "/%zz",
            "/%4",
            "/%ff",
            "x",
            "",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_requests_for_this_host_are_answered() {
        let head = |h: &str| vec!["GET / HTTP/1.1".to_owned(), h.to_owned()];
        for ok in [
            "Host: 127.0.0.1:8080",
            "host: localhost:8080",
            "Host: LOCALHOST",
            "Host: [::1]:8080",
        ] {
            assert!(host_is_local(&head(ok), 8080), "{ok}");
        }
        assert!(host_is_local(&["GET / HTTP/1.0".to_owned()], 8080));
        for bad in [
            "Host: evil.example:8080",
            "Host: 127.0.0.1:8081",
            "Host: localhost.evil.example",
            "Host: 127.0.0.1:x",
            "Host: ",
        ] {
            assert!(!host_is_local(&head(bad), 8080), "{bad}");
        }
    }
}
