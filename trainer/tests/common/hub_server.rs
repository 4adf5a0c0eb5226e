//! A local HTTP server that speaks the hub's protocol for the tests (repo listings with
//! `blobs=true`, `resolve/COMMIT/FILE` with HTTP ranges) and misbehaves on purpose where a file
//! asks it to ([`Fault`]). Shared by the hub tests through `#[path]`.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// How the server answers a file.
#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// The first answer announces the whole file and sends half, then closes.
    CutOnce,
    /// The first answer is 429 (Retry-After: 0).
    RateLimitedOnce,
    /// Every answer sends half the file (the listing says the whole size).
    AlwaysTruncated,
    /// The server holds only the start of a file of this many bytes (a safetensors header
    /// without its weights): the listing gives that size, ranges inside the start are answered,
    /// and any request for more is a 500 the test sees in the log as `PATH … WHOLE`.
    StartOnly(usize),
}

pub struct File {
    pub bytes: Vec<u8>,
    pub fault: Fault,
}

/// `datasets/ORG/NAME` or `models/ORG/NAME` → revision (as the client asks for it:
/// `refs%2Fconvert%2Fparquet`) → (commit, files).
pub type Repos = BTreeMap<String, BTreeMap<String, (String, BTreeMap<String, File>)>>;

pub fn add(r: &mut Repos, repo: &str, rev: &str, sha: &str, files: BTreeMap<String, File>) {
    r.entry(repo.to_owned())
        .or_default()
        .insert(rev.to_owned(), (sha.to_owned(), files));
}

fn respond(stream: &mut std::net::TcpStream, status: &str, headers: &str, body: &[u8], send: usize) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&body[..send.min(body.len())]);
}

/// Serves the repos `make` builds (in the server's thread), datasets and models as the hub does.
/// Logs each request as `PATH START` (`PATH START-END` for a closed range; `… WHOLE` appended
/// when a [`Fault::StartOnly`] file was asked for more than its start).
pub fn serve_repos(make: fn() -> Repos) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        let repos = make();
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let (mut range, mut end) = (0usize, None::<usize>);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
                    range = a.parse().unwrap_or(0);
                    end = b.parse().ok();
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let path = target.split('?').next().unwrap_or("").to_owned();
            let logged = match end {
                Some(e) => format!("{path} {range}-{e}"),
                None => format!("{path} {range}"),
            };
            seen.lock().unwrap().push(logged.clone());
            if path.contains("/gated/repo/") {
                respond(&mut stream, "401 Unauthorized", "", b"gated", usize::MAX);
                continue;
            }
            if let Some(rest) = path.strip_prefix("/api/") {
                let (repo, rev) = rest.split_once("/revision/").unwrap();
                match repos.get(repo).and_then(|r| r.get(rev)) {
                    Some((sha, files)) => {
                        let siblings: Vec<_> = files
                            .iter()
                            .map(|(name, f)| {
                                let sum = format!("{:x}", Sha256::digest(&f.bytes));
                                let size = match f.fault {
                                    Fault::StartOnly(size) => size,
                                    _ => f.bytes.len(),
                                };
                                serde_json::json!({ "rfilename": name, "size": size,
                                    "lfs": { "sha256": sum, "size": size } })
                            })
                            .collect();
                        let body = serde_json::json!({ "sha": sha, "siblings": siblings }).to_string();
                        respond(&mut stream, "200 OK", "", body.as_bytes(), usize::MAX);
                    }
                    None => respond(&mut stream, "404 Not Found", "", b"no such repo", usize::MAX),
                }
                continue;
            }
            let file = repos.iter().find_map(|(repo, revs)| {
                // Files of a model repo are under /ORG/NAME, of a dataset under /datasets/ORG/NAME.
                let url = repo.strip_prefix("models/").unwrap_or(repo);
                revs.values().find_map(|(sha, files)| {
                    let name = path.strip_prefix(&format!("/{url}/resolve/{sha}/"))?;
                    files.get(name)
                })
            });
            let Some(file) = file else {
                respond(&mut stream, "404 Not Found", "", b"not found", usize::MAX);
                continue;
            };
            let n = served.entry(path.clone()).or_default();
            *n += 1;
            if let Some(whole) = answer(&mut stream, file, *n, (range, end)) {
                seen.lock().unwrap().push(format!("{logged} {whole}"));
            }
        }
    });
    (addr, log)
}

/// Answers a request for `file` (the `n`-th for its path) with bytes `range` onward (to the
/// closed end, if given), misbehaving as its [`Fault`] says; `Some("WHOLE")` when a
/// [`Fault::StartOnly`] file was asked for more than its start.
fn answer(
    stream: &mut std::net::TcpStream,
    file: &File,
    n: usize,
    (range, end): (usize, Option<usize>),
) -> Option<&'static str> {
    let len = file.bytes.len();
    match file.fault {
        Fault::StartOnly(size) => match end {
            Some(e) if e < len && range <= e => {
                let h = format!("Content-Range: bytes {range}-{e}/{size}\r\n");
                respond(stream, "206 Partial Content", &h, &file.bytes[range..=e], usize::MAX);
            }
            _ => {
                respond(stream, "500 Internal Server Error", "", b"only the start", usize::MAX);
                return Some("WHOLE");
            }
        },
        Fault::RateLimitedOnce if n == 1 => {
            respond(
                stream,
                "429 Too Many Requests",
                "Retry-After: 0\r\n",
                b"slow down",
                usize::MAX,
            );
        }
        Fault::CutOnce if n == 1 => respond(stream, "200 OK", "", &file.bytes, len / 2),
        Fault::AlwaysTruncated => respond(stream, "200 OK", "", &file.bytes[..len / 2], usize::MAX),
        _ if (range > 0 || end.is_some()) && range < len => {
            let e = end.unwrap_or(len - 1).min(len - 1);
            let h = format!("Content-Range: bytes {range}-{e}/{len}\r\n");
            respond(stream, "206 Partial Content", &h, &file.bytes[range..=e], usize::MAX);
        }
        _ => respond(stream, "200 OK", "", &file.bytes, usize::MAX),
    }
    None
}
