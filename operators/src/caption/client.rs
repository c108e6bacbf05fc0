//! A blocking client for OpenAI-compatible chat-completions endpoints (vLLM, llama.cpp server,
//! Ollama's /v1, LM Studio, OpenAI), with image content parts. Errors are classified so callers
//! can retry what is transient (429 with Retry-After, 5xx, timeouts, resets, truncated bodies) and
//! give up on what is not (401/403/404, 400).

use base64::Engine;
use serde_json::{Value, json};
use std::time::Duration;

/// One part of a user message.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// A JPEG image, sent as a `data:image/jpeg;base64,…` URL.
    Jpeg(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: String,
    pub parts: Vec<Part>,
}

impl Message {
    pub fn system(text: impl Into<String>) -> Self {
        Message { role: "system".into(), parts: vec![Part::Text(text.into())] }
    }
    pub fn user(parts: Vec<Part>) -> Self {
        Message { role: "user".into(), parts }
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Message { role: "assistant".into(), parts: vec![Part::Text(text.into())] }
    }
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub max_tokens: u32,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatAnswer {
    pub content: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("rate limited (HTTP 429){}", .retry_after.map(|d| format!(", retry after {:.1}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("server error HTTP {status}: {body}")]
    Server { status: u16, body: String },
    #[error("request refused HTTP {status}: {body}{}", fix_for(*.status))]
    Client { status: u16, body: String },
    #[error("no answer within the timeout")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("unusable response: {0}")]
    BadResponse(String),
}

fn fix_for(status: u16) -> &'static str {
    match status {
        401 | 403 => " (check the API key environment variable named by `api_key_env`)",
        404 => " (check `endpoint` — it should end in /v1 — and `model`)",
        413 => " (too much in one request: lower `frame_size` or `frames`)",
        _ => "",
    }
}

impl ChatError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, ChatError::Client { .. })
    }
    /// Server-requested wait before the next attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ChatError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// An endpoint and how to talk to it.
#[derive(Clone)]
pub struct ChatClient {
    url: String,
    model: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ChatClient {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient").field("url", &self.url).field("model", &self.model).finish_non_exhaustive()
    }
}

/// Parse a `Retry-After` header: seconds, possibly fractional (HTTP dates are not supported and
/// fall back to the caller's backoff).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

impl ChatClient {
    /// `endpoint` is the API base, e.g. `http://127.0.0.1:8000/v1`.
    pub fn new(endpoint: &str, model: &str, api_key: Option<String>, timeout: Duration) -> ChatClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .build();
        ChatClient {
            url: format!("{}/chat/completions", endpoint.trim_end_matches('/')),
            model: model.to_string(),
            api_key,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The JSON body of a request.
    pub fn body(&self, req: &ChatRequest) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| {
                let only_text = m.parts.iter().all(|p| matches!(p, Part::Text(_)));
                let content = if only_text {
                    Value::String(
                        m.parts
                            .iter()
                            .filter_map(|p| if let Part::Text(t) = p { Some(t.as_str()) } else { None })
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                } else {
                    Value::Array(
                        m.parts
                            .iter()
                            .map(|p| match p {
                                Part::Text(t) => json!({"type": "text", "text": t}),
                                Part::Jpeg(bytes) => json!({"type": "image_url", "image_url": {
                                    "url": format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))}}),
                            })
                            .collect(),
                    )
                };
                json!({"role": m.role, "content": content})
            })
            .collect();
        json!({"model": self.model, "messages": messages, "temperature": req.temperature, "max_tokens": req.max_tokens, "stream": false})
    }

    /// Send one request; no retries here (callers decide, with the error's class).
    pub fn complete(&self, req: &ChatRequest) -> Result<ChatAnswer, ChatError> {
        let body = self.body(req).to_string();
        let mut r = self.agent.post(&self.url).header("Content-Type", "application/json");
        if let Some(k) = &self.api_key {
            r = r.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = r.send(body.as_bytes()).map_err(transport_error)?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let text = resp.body_mut().with_config().limit(32 << 20).read_to_string().map_err(transport_error)?;
        if status == 429 {
            return Err(ChatError::RateLimited { retry_after });
        }
        if status >= 500 {
            return Err(ChatError::Server { status, body: snippet(&text) });
        }
        if !(200..300).contains(&status) {
            return Err(ChatError::Client { status, body: snippet(&text) });
        }
        parse_answer(&text)
    }
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 300 { format!("{}…", s.chars().take(300).collect::<String>()) } else { s.to_string() }
}

fn transport_error(e: ureq::Error) -> ChatError {
    match e {
        ureq::Error::Timeout(_) => ChatError::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ChatError::Timeout,
        ureq::Error::Io(io) => ChatError::Connection(io.to_string()),
        other => ChatError::Connection(other.to_string()),
    }
}

/// Parse a chat-completions response body.
pub fn parse_answer(text: &str) -> Result<ChatAnswer, ChatError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ChatError::BadResponse(format!("invalid JSON ({e})")))?;
    let choice =
        v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| ChatError::BadResponse("no `choices[0]`".into()))?;
    let content = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // Some servers return content parts.
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        Some(Value::Null) | None => String::new(),
        Some(other) => return Err(ChatError::BadResponse(format!("`message.content` is {other}"))),
    };
    let usage = v.get("usage");
    let n = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Ok(ChatAnswer {
        content,
        model: v.get("model").and_then(Value::as_str).unwrap_or("").to_string(),
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers_and_errors() {
        let a = parse_answer(r#"{"model":"m","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#).unwrap();
        assert_eq!((a.content.as_str(), a.prompt_tokens, a.completion_tokens), ("hi", 5, 1));
        assert!(matches!(parse_answer(r#"{"choices":[{"message":{"content":"trunc"#), Err(ChatError::BadResponse(_))));
        assert!(matches!(parse_answer(r#"{"choices":[]}"#), Err(ChatError::BadResponse(_))));
        assert_eq!(parse_answer(r#"{"choices":[{"message":{"content":null}}]}"#).unwrap().content, "");
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert!(!ChatError::Client { status: 401, body: String::new() }.is_transient());
        assert!(ChatError::Server { status: 503, body: String::new() }.is_transient());
    }

    #[test]
    fn images_become_data_urls_and_the_key_is_not_debug_printed() {
        let c = ChatClient::new("http://127.0.0.1:9/v1/", "m", Some("sekrit".into()), Duration::from_secs(1));
        let body = c.body(&ChatRequest {
            messages: vec![
                Message::system("be brief"),
                Message::user(vec![Part::Text("look".into()), Part::Jpeg(vec![0xff, 0xd8])]),
            ],
            temperature: 0.2,
            max_tokens: 10,
        });
        assert_eq!(body["messages"][0]["content"], "be brief");
        assert_eq!(body["messages"][1]["content"][1]["image_url"]["url"], "data:image/jpeg;base64,/9g=");
        assert!(!format!("{c:?}").contains("sekrit"));
        assert_eq!(c.url, "http://127.0.0.1:9/v1/chat/completions");
    }
}
