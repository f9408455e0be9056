//! One delivery attempt: resolve and check the target, POST the signed body to exactly the
//! checked address, read a bounded part of the answer and its `Retry-After`; and the retry
//! schedule.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::redirect::Policy;

use super::sign;
use super::target::{self, TargetError};

/// Most bytes of a receiver's answer read (and kept in the deliveries record); the rest is not
/// read.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024;

/// Pauses between attempts, in units of `--webhook-retry-unit-ms` (one second by default):
/// attempts at 0 s, 5 s, 35 s (three within a minute), then after 5 min, 30 min, 2 h, 5 h,
/// 10 h and 10 h: nine attempts over about 27.6 hours, then the delivery is given up.
pub(crate) const SCHEDULE: [u32; 8] = [5, 30, 300, 1800, 7200, 18_000, 36_000, 36_000];

/// The pause before the next attempt once `attempts` have failed, or `None` when the schedule
/// is over.
pub(crate) fn retry_delay(attempts: u32, unit: Duration) -> Option<Duration> {
    let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
    SCHEDULE.get(index).map(|&units| unit * units)
}

/// Longest pause a receiver's `Retry-After` can ask for; a longer one is cut to this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The pause before the next attempt once `attempts` have failed, given the receiver's
/// `Retry-After` (when it sent one): the later of the schedule's own step and `Retry-After`
/// (cut to [`MAX_RETRY_AFTER`]), so a receiver can slow retries down but never speed them up.
/// `None` when the schedule is over: `Retry-After` does not add attempts.
pub(crate) fn next_delay(
    attempts: u32,
    unit: Duration,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled = retry_delay(attempts, unit)?;
    Some(match retry_after {
        Some(asked) => scheduled.max(asked.min(MAX_RETRY_AFTER)),
        None => scheduled,
    })
}

/// The pause a `Retry-After` value asks for, read at `now`: delta-seconds (`120`) or an HTTP
/// date (`Wed, 21 Oct 2026 07:28:00 GMT`, and the two obsolete forms); a date already past asks
/// for no pause. Anything else (empty, negative, fractional, garbage) is `None`: ignored.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time": the cap applies later.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How an attempt ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// Another answer: retried.
    Failed(u16),
    /// 410: the endpoint is disabled.
    Gone,
    /// No complete answer in time: retried.
    Timeout,
    /// No connection or a broken answer: retried.
    Error(String),
    /// The target resolved to a refused address: retried (the name may be fixed).
    Refused(String),
}

impl Outcome {
    /// The `outcome` label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Failed(_) => "failed",
            Outcome::Gone => "gone",
            Outcome::Timeout => "timeout",
            Outcome::Error(_) => "error",
            Outcome::Refused(_) => "refused",
        }
    }

    /// The receiver's status, when it answered.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered(s) | Outcome::Failed(s) => Some(*s),
            Outcome::Gone => Some(410),
            _ => None,
        }
    }

    /// Why it failed without an answer.
    pub(crate) fn error(&self) -> Option<String> {
        match self {
            Outcome::Error(e) | Outcome::Refused(e) => Some(e.clone()),
            Outcome::Timeout => Some("no answer in time".into()),
            _ => None,
        }
    }
}

/// What one attempt sends.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The endpoint's URL.
    pub(crate) url: &'a str,
    /// The endpoint's secret.
    pub(crate) secret: &'a str,
    /// The `webhook-id`.
    pub(crate) webhook_id: &'a str,
    /// The body.
    pub(crate) body: &'a str,
    /// `--webhook-allow-private`.
    pub(crate) allow_private: bool,
    /// `--webhook-timeout-ms`: the whole attempt, resolution included.
    pub(crate) timeout: Duration,
}

/// What an attempt gave: its outcome, the start of the answer, how long it took.
#[derive(Debug)]
pub(crate) struct Answer {
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// The first [`MAX_RESPONSE_BYTES`] of the answer's body (lossy UTF-8).
    pub(crate) response: Option<String>,
    /// The pause the receiver asked for with `Retry-After`, on an answer that is retried.
    pub(crate) retry_after: Option<Duration>,
    /// Time taken.
    pub(crate) elapsed: Duration,
}

/// Makes one attempt, never taking longer than `request.timeout`.
pub(crate) async fn send(request: &Request<'_>) -> Answer {
    let started = Instant::now();
    let (outcome, response, retry_after) =
        match tokio::time::timeout(request.timeout, exchange(request)).await {
            Ok(done) => done,
            Err(_) => (Outcome::Timeout, None, None),
        };
    Answer {
        outcome,
        response,
        retry_after,
        elapsed: started.elapsed(),
    }
}

/// The exchange: its outcome, the start of the answer, and `Retry-After` on a retried answer.
type Exchanged = (Outcome, Option<String>, Option<Duration>);

async fn exchange(request: &Request<'_>) -> Exchanged {
    let url = match target::parse_url(request.url) {
        Ok(url) => url,
        Err(e) => return (Outcome::Refused(e.to_string()), None, None),
    };
    let addr = match target::resolve(&url, request.allow_private, request.timeout).await {
        Ok(addr) => addr,
        Err(e @ TargetError::Private(_)) => return (Outcome::Refused(e.to_string()), None, None),
        Err(e) => return (Outcome::Error(e.to_string()), None, None),
    };
    // A client per attempt, pinned to the checked address (`resolve` overrides DNS for the
    // URL's host, so TLS still checks the name), following no redirect (a redirect could lead
    // anywhere) and using no proxy. Attempts are rare enough for this to cost nothing that
    // matters.
    let mut builder = reqwest::Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        .timeout(request.timeout);
    if let Some(host) = url.host_str() {
        builder = builder.resolve(host, addr);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => return (Outcome::Error(format!("http client: {e}")), None, None),
    };
    let timestamp = crate::model::now_ms() / 1000;
    let Some(signature) =
        sign::signature(request.secret, request.webhook_id, timestamp, request.body)
    else {
        return (Outcome::Error("unusable secret".into()), None, None);
    };
    let sent = client
        .post(url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("Beacon-Webhooks/1"))
        .header("webhook-id", request.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(request.body.to_owned())
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return (Outcome::Timeout, None, None),
        Err(e) => return (Outcome::Error(without_url(&e)), None, None),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) if e.is_timeout() => return (Outcome::Timeout, None, None),
            // The status is what counts; a body cut short is only noted.
            Err(_) => break,
        }
    }
    body.truncate(MAX_RESPONSE_BYTES);
    let text = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
    let outcome = match status {
        200..=299 => Outcome::Delivered(status),
        410 => Outcome::Gone,
        _ => Outcome::Failed(status),
    };
    let retry_after = match outcome {
        Outcome::Failed(_) => retry_after,
        _ => None,
    };
    (outcome, text, retry_after)
}

/// A reqwest error's message without its URL (which the admin knows, and which may carry a
/// token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "broken answer"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A receiver answering every request with `status` and a body of `ok`, counting
    /// connections.
    async fn receiver(
        status: u16,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        receiver_answering(format!(
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        ))
        .await
    }

    /// A receiver answering every whole request (its body is `{}`) with `answer`, counting
    /// connections.
    async fn receiver_answering(
        answer: String,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The whole request (its body is `{}`) before answering.
                let mut request = Vec::new();
                let mut buffer = [0; 4096];
                while !request.ends_with(b"\r\n\r\n{}") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_delivery_time() {
        let (addr, accepted) = receiver(200).await;
        let url = format!("http://localhost:{}/hook", addr.port());
        let secret = sign::new_secret();
        let mut request = Request {
            url: &url,
            secret: &secret,
            webhook_id: "msg_1",
            body: "{}",
            allow_private: false,
            timeout: Duration::from_secs(5),
        };
        let answer = send(&request).await;
        assert!(matches!(answer.outcome, Outcome::Refused(_)), "{answer:?}");
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "never connected"
        );

        let direct = format!("http://{addr}/hook");
        request.url = &direct;
        request.allow_private = true;
        let answer = send(&request).await;
        assert_eq!(answer.outcome, Outcome::Delivered(200));
        assert_eq!(answer.response.as_deref(), Some("ok"));
    }

    #[tokio::test]
    async fn statuses_map_to_outcomes() {
        for (status, outcome) in [
            (410, Outcome::Gone),
            (500, Outcome::Failed(500)),
            (302, Outcome::Failed(302)),
        ] {
            let (addr, _) = receiver(status).await;
            let url = format!("http://{addr}/hook");
            let secret = sign::new_secret();
            let request = Request {
                url: &url,
                secret: &secret,
                webhook_id: "msg_1",
                body: "{}",
                allow_private: true,
                timeout: Duration::from_secs(5),
            };
            assert_eq!(send(&request).await.outcome, outcome, "{status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        for garbage in [
            "",
            "-5",
            "1.5",
            "soon",
            "12 s",
            "Wed, 99 Foo 2026 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn retry_after_only_delays_and_is_capped() {
        let unit = Duration::from_secs(1);
        // Shorter than the schedule's step: the schedule wins.
        assert_eq!(
            next_delay(1, unit, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(5))
        );
        // Longer: the receiver's pause wins.
        assert_eq!(
            next_delay(1, unit, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        // Absurd: cut to the cap.
        assert_eq!(
            next_delay(1, unit, Some(Duration::from_secs(u64::MAX))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(next_delay(1, unit, None), Some(Duration::from_secs(5)));
        // The schedule over: no more attempts, whatever the receiver asks.
        let last = SCHEDULE.len() as u32 + 1;
        assert_eq!(next_delay(last, unit, Some(Duration::from_secs(1))), None);
    }

    #[tokio::test]
    async fn retry_after_is_read_on_retried_answers_only() {
        for (status, expected) in [(503, Some(Duration::from_secs(7))), (200, None)] {
            let (addr, _) = receiver_answering(format!(
                "HTTP/1.1 {status} X\r\nretry-after: 7\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ))
            .await;
            let url = format!("http://{addr}/hook");
            let secret = sign::new_secret();
            let request = Request {
                url: &url,
                secret: &secret,
                webhook_id: "msg_1",
                body: "{}",
                allow_private: true,
                timeout: Duration::from_secs(5),
            };
            assert_eq!(send(&request).await.retry_after, expected, "{status}");
        }
    }

    #[test]
    fn three_attempts_within_a_minute_and_a_day_covered() {
        let unit = Duration::from_secs(1);
        assert_eq!(retry_delay(0, unit), None);
        let first_three = retry_delay(1, unit).unwrap() + retry_delay(2, unit).unwrap();
        assert!(first_three <= Duration::from_secs(60));
        let all: Duration = (1..=SCHEDULE.len() as u32)
            .map(|n| retry_delay(n, unit).unwrap())
            .sum();
        assert!(all >= Duration::from_secs(24 * 3600));
        assert_eq!(retry_delay(SCHEDULE.len() as u32 + 1, unit), None);
    }
}
