//! The review page's HTTP server: small, synchronous (`tiny_http`), a few worker threads.
//!
//! Every request — page, script, API, video bytes — must carry the session token, as the query
//! parameter `token=` or the header `X-Medgen-Token`; anything else gets 403. Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `GET /results` | the page (rating view, results view) |
//! | `GET /page.js` | its script |
//! | `GET /api/task?rater=NAME` | the rater's next pair and progress ([`super::TaskView`]) |
//! | `POST /api/rate` | store a form ([`super::Submission`], JSON) |
//! | `POST /api/skip` | postpone a pair: `{"rater": .., "prompt_id": ..}` |
//! | `GET /api/results` | [`super::Results`] |
//! | `GET /video/ID` | video bytes, with `Range` support |

use super::{Review, ReviewError, Submission};
use serde::Deserialize;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use tiny_http::{Header, Method, Request, Response, StatusCode};

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");

/// Header that may carry the token instead of the query.
pub const TOKEN_HEADER: &str = "X-Medgen-Token";

/// Largest accepted request body.
const MAX_BODY: u64 = 64 * 1024;

/// A fresh token: 128 random bits from the OS, as 32 hex digits.
pub fn new_token() -> Result<String, ReviewError> {
    Ok(random_bytes::<16>()?.iter().map(|b| format!("{b:02x}")).collect())
}

/// `N` random bytes from the OS (`/dev/urandom`).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ReviewError> {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| ReviewError::Server(format!("cannot read random bytes from /dev/urandom: {e}")))?;
    Ok(buf)
}

/// Compare two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A running review server. Stop it with [`Server::shutdown`] (dropping it also stops it).
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    token: String,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listen on `bind` (port 0: any free port) and serve `review` with `threads` workers.
    pub fn start(review: Arc<Review>, bind: SocketAddr, token: String, threads: usize) -> Result<Server, ReviewError> {
        let http = tiny_http::Server::http(bind)
            .map_err(|e| ReviewError::Server(format!("cannot listen on {bind}: {e}; choose another --bind")))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| ReviewError::Server(format!("listening on {bind} gave no IP address")))?;
        let http = Arc::new(http);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..threads.max(1))
            .map(|i| {
                let (http, stop, review, token) = (http.clone(), stop.clone(), review.clone(), token.clone());
                std::thread::Builder::new()
                    .name(format!("review-http-{i}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match http.recv() {
                                Ok(rq) => handle(&review, &token, rq),
                                Err(e) => {
                                    if !stop.load(Ordering::Relaxed) {
                                        tracing::warn!("review server: {e}");
                                    }
                                }
                            }
                        }
                    })
                    .map_err(|e| ReviewError::Server(format!("cannot start a server thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Server { http, addr, token, stop, workers })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the rating page, token included.
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token)
    }

    /// The URL of the results page, token included.
    pub fn results_url(&self) -> String {
        format!("http://{}/results?token={}", self.addr, self.token)
    }

    /// Stop accepting requests and wait for the workers.
    pub fn shutdown(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in &self.workers {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Decode `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Split a request URL into its path and decoded query parameters.
fn split_url(url: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let params = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    (path, params)
}

fn header(name: &str, value: &str) -> Header {
    // Names and values here are ASCII constants or digits: always valid.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| Header::from_bytes(&b"X-Invalid-Header"[..], &b"1"[..]).expect("constant header is valid"))
}

fn common_headers(content_type: &str) -> Vec<Header> {
    vec![
        header("Content-Type", content_type),
        header("Cache-Control", "no-store"),
        header("X-Content-Type-Options", "nosniff"),
        header("Referrer-Policy", "no-referrer"),
        header("X-Frame-Options", "DENY"),
    ]
}

fn respond_bytes(rq: Request, status: u16, content_type: &str, body: Vec<u8>) {
    let len = body.len();
    let mut headers = common_headers(content_type);
    if content_type.starts_with("text/html") {
        headers.push(header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; media-src 'self'; \
             connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'",
        ));
    }
    let response = Response::new(StatusCode(status), headers, std::io::Cursor::new(body), Some(len), None);
    // The client may have gone away: nothing to do about it.
    let _ = rq.respond(response);
}

fn respond_json(rq: Request, status: u16, value: &serde_json::Value) {
    respond_bytes(rq, status, "application/json", value.to_string().into_bytes());
}

fn respond_error(rq: Request, status: u16, message: &str) {
    respond_json(rq, status, &serde_json::json!({ "error": message }));
}

/// Whether the request carries the right token (query or header).
fn authorised(rq: &Request, params: &[(String, String)], token: &str) -> bool {
    let from_header = rq
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(TOKEN_HEADER))
        .map(|h| h.value.as_str().to_string());
    let from_query = params.iter().find(|(k, _)| k == "token").map(|(_, v)| v.clone());
    let mut ok = false;
    for given in [from_header, from_query].into_iter().flatten() {
        ok |= constant_time_eq(given.as_bytes(), token.as_bytes());
    }
    ok
}

fn handle(review: &Review, token: &str, rq: Request) {
    let url = rq.url().to_string();
    let (path, params) = split_url(&url);
    if !authorised(&rq, &params, token) {
        respond_error(rq, 403, "forbidden: open the URL that `medgen review` printed (it carries the access token)");
        return;
    }
    let method = rq.method().clone();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match (&method, path) {
        (Method::Get, "/" | "/results") => {
            let html = PAGE_HTML.replace("{{TOKEN}}", token);
            respond_bytes(rq, 200, "text/html; charset=utf-8", html.into_bytes());
        }
        (Method::Get, "/page.js") => respond_bytes(rq, 200, "text/javascript; charset=utf-8", PAGE_JS.into()),
        (Method::Get, "/api/task") => {
            let result = review.next_task(param("rater").unwrap_or(""));
            json_result(rq, result.map(|t| serde_json::to_value(t).unwrap_or_default()));
        }
        (Method::Get, "/api/results") => {
            json_result(rq, review.results().map(|r| serde_json::to_value(r).unwrap_or_default()));
        }
        (Method::Post, "/api/rate") => {
            let mut rq = rq;
            let result = read_json::<Submission>(&mut rq)
                .and_then(|s| review.submit(&s).and_then(|()| review.next_task(&s.rater)))
                .map(|t| serde_json::to_value(t).unwrap_or_default());
            json_result(rq, result);
        }
        (Method::Post, "/api/skip") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Skip {
                rater: String,
                prompt_id: String,
            }
            let mut rq = rq;
            let result = read_json::<Skip>(&mut rq)
                .and_then(|s| review.skip(&s.rater, &s.prompt_id).and_then(|()| review.next_task(&s.rater)))
                .map(|t| serde_json::to_value(t).unwrap_or_default());
            json_result(rq, result);
        }
        (Method::Get | Method::Head, p) if p.starts_with("/video/") => match review.video_file(&p["/video/".len()..]) {
            Some(file) => serve_file(rq, file),
            None => respond_error(rq, 404, "no such video"),
        },
        (_, "/" | "/results" | "/page.js" | "/api/task" | "/api/results" | "/api/rate" | "/api/skip") => {
            respond_error(rq, 405, "method not allowed")
        }
        _ => respond_error(rq, 404, "not found"),
    }
}

fn json_result(rq: Request, result: Result<serde_json::Value, ReviewError>) {
    match result {
        Ok(v) => respond_json(rq, 200, &v),
        Err(ReviewError::BadRequest(m)) => respond_error(rq, 400, &m),
        Err(e) => {
            tracing::error!("review: {e}");
            respond_error(rq, 500, &e.to_string())
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(rq: &mut Request) -> Result<T, ReviewError> {
    let mut body = Vec::new();
    rq.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| ReviewError::BadRequest(format!("cannot read the request body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(ReviewError::BadRequest(format!("request body over {MAX_BODY} bytes")));
    }
    serde_json::from_slice(&body).map_err(|e| ReviewError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Parse a single `bytes=` range against a file of `len` bytes: `Ok(None)` for no/unsupported
/// header (serve everything), `Err(())` when unsatisfiable.
fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None); // multiple ranges: serve the whole file (allowed by RFC 9110)
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // Suffix: the last N bytes.
        let n: u64 = end.parse().map_err(|_| ())?;
        if n == 0 || len == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let s: u64 = start.parse().map_err(|_| ())?;
        let e: u64 = if end.is_empty() { len.saturating_sub(1) } else { end.parse().map_err(|_| ())? };
        if s >= len || e < s {
            return Err(());
        }
        (s, e.min(len - 1))
    };
    Ok(Some(range))
}

fn serve_file(rq: Request, path: &std::path::Path) {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("review: cannot open {}: {e}", path.display());
            return respond_error(rq, 500, "cannot read the video");
        }
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return respond_error(rq, 500, "cannot read the video"),
    };
    let range = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| parse_range(h.value.as_str(), len))
        .unwrap_or(Ok(None));
    let mut headers = common_headers("video/mp4");
    headers.push(header("Accept-Ranges", "bytes"));
    let (status, start, count) = match range {
        Ok(None) => (200, 0, len),
        Ok(Some((s, e))) => {
            headers.push(header("Content-Range", &format!("bytes {s}-{e}/{len}")));
            (206, s, e - s + 1)
        }
        Err(()) => {
            headers.push(header("Content-Range", &format!("bytes */{len}")));
            let r = Response::new(StatusCode(416), headers, std::io::empty(), Some(0), None);
            let _ = rq.respond(r);
            return;
        }
    };
    if file.seek(SeekFrom::Start(start)).is_err() {
        return respond_error(rq, 500, "cannot read the video");
    }
    let Ok(count_usize) = usize::try_from(count) else { return respond_error(rq, 500, "video too large") };
    let r = Response::new(StatusCode(status), headers, file.take(count), Some(count_usize), None);
    let _ = rq.respond(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=2-4", 10), Ok(Some((2, 4))));
        assert_eq!(parse_range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Err(()));
        assert_eq!(parse_range("bytes=4-2", 10), Err(()));
        assert_eq!(parse_range("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(parse_range("items=0-1", 10), Ok(None));
    }

    #[test]
    fn query_decoding_and_compare() {
        let (path, params) = split_url("/api/task?token=ab&rater=Dr%20O%27Neil+x&x");
        assert_eq!(path, "/api/task");
        assert_eq!(params[1], ("rater".to_string(), "Dr O'Neil x".to_string()));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let t = new_token().unwrap();
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, new_token().unwrap());
    }
}
