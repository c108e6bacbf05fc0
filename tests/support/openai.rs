//! A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol, for tests.
//! A test decides each reply (`Reply`) from the request, so it can inject faults: 429 with
//! Retry-After, 5xx, slow answers, truncated JSON, empty content, connection resets. The server
//! records every request (time, body) and the peak number of requests in flight.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this assistant content.
    Answer(String),
    /// Any status with a body and an optional Retry-After (seconds).
    Status(u16, String, Option<String>),
    /// Wait, then reply.
    Slow(Duration, Box<Reply>),
    /// 200 with a body cut in the middle of the JSON.
    Truncated,
    /// 200 with `"content": ""`.
    Empty,
    /// Close the connection without answering.
    Reset,
}

/// One received request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub body: serde_json::Value,
    /// All text parts of the last user message, joined.
    pub text: String,
    pub images: usize,
    pub auth: Option<String>,
}

type Policy = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

pub struct Server {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub peak_in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Start a server; `policy(request, n)` gets each request and its 0-based arrival number.
    pub fn start(policy: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let policy: Arc<Policy> = Arc::new(policy);
        let (seen2, peak2, stop2) = (seen.clone(), peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let in_flight = Arc::new(AtomicUsize::new(0));
            let arrivals = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let mut handlers = Vec::new();
            // Bounded: the server stops by itself after 10 minutes.
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (policy, seen, peak, in_flight, arrivals) =
                            (policy.clone(), seen2.clone(), peak2.clone(), in_flight.clone(), arrivals.clone());
                        handlers.push(std::thread::spawn(move || {
                            let _ = handle(stream, &*policy, &seen, &peak, &in_flight, &arrivals);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        Server { url, seen, peak_in_flight: peak, stop, thread: Some(thread) }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    stream: TcpStream,
    policy: &Policy,
    seen: &Mutex<Vec<Seen>>,
    peak: &AtomicUsize,
    in_flight: &AtomicUsize,
    arrivals: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut length = 0usize;
    let mut auth = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let now_in = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(now_in, Ordering::SeqCst);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let (text, images) = user_parts(&body);
    let req = Seen { at: Instant::now(), body, text, images, auth };
    let n = arrivals.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(req.clone());
    let mut reply = policy(&req, n);
    while let Reply::Slow(d, inner) = reply {
        std::thread::sleep(d);
        reply = *inner;
    }
    // Answered from here on: a client that reads the reply may send its next request before this
    // thread returns, so the request stops counting as in flight before the reply is written.
    in_flight.fetch_sub(1, Ordering::SeqCst);
    respond(stream, reply)
}

fn user_parts(body: &serde_json::Value) -> (String, usize) {
    let Some(msgs) = body.get("messages").and_then(|m| m.as_array()) else { return (String::new(), 0) };
    let Some(last) = msgs.iter().rev().find(|m| m["role"] == "user") else { return (String::new(), 0) };
    match &last["content"] {
        serde_json::Value::String(s) => (s.clone(), 0),
        serde_json::Value::Array(parts) => {
            let text =
                parts.iter().filter_map(|p| p.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join("\n");
            let images = parts.iter().filter(|p| p["type"] == "image_url").count();
            (text, images)
        }
        _ => (String::new(), 0),
    }
}

fn respond(mut stream: TcpStream, reply: Reply) -> std::io::Result<()> {
    let write = |stream: &mut TcpStream, status: u16, body: &str, extra: &str| {
        let msg = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        );
        stream.write_all(msg.as_bytes())
    };
    match reply {
        Reply::Answer(content) => {
            let body = serde_json::json!({
                "id": "x", "object": "chat.completion", "model": "mock",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
            });
            write(&mut stream, 200, &body.to_string(), "")
        }
        Reply::Empty => write(&mut stream, 200, r#"{"choices":[{"message":{"role":"assistant","content":""}}]}"#, ""),
        Reply::Truncated => {
            let full = r#"{"choices":[{"message":{"role":"assistant","content":"The short video shows"#;
            let msg = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{full}");
            stream.write_all(msg.as_bytes())
        }
        Reply::Status(code, body, retry_after) => {
            let extra = retry_after.map(|r| format!("Retry-After: {r}\r\n")).unwrap_or_default();
            write(&mut stream, code, &body, &extra)
        }
        Reply::Slow(d, inner) => {
            std::thread::sleep(d);
            respond(stream, *inner)
        }
        Reply::Reset => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
    }
}
