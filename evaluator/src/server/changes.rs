//! The change stream, served: `pbflags.v1.FlagChangeService/WatchChanges` over gRPC (a tonic
//! service, so gRPC-Web too through tonic-web) and over Connect server streaming
//! (`application/connect+proto` and `application/connect+json`), from the engine's
//! [`Hub`](crate::core::changes::Hub).
//!
//! A stream opens with a heartbeat carrying the sequence number it starts after, then sends every
//! change as it is applied and a heartbeat (repeating the last number) every [`HEARTBEAT`]. It
//! ends when the client goes away, when the server shuts down (cleanly), when the subscriber falls
//! behind (`resource_exhausted`), or — refused at once — beyond `--max-watchers`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse as _, Response};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt as _};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use pbflags_proto::v1::flag_change_service_server::FlagChangeService;
use pbflags_proto::v1::{ChangeKind as WireKind, WatchChangesRequest, WatchChangesResponse};
use tonic::Status;

use crate::core::changes::{ChangeKind, Event, Next, Subscription};
use crate::core::engine::Engine;
use crate::protocol::connect::{self, Codec};
use crate::protocol::status::connect_name;

/// How often an idle stream says it is alive; subscribers treat three missed beats as a lost
/// stream.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The service's full name.
pub const SERVICE: &str = "pbflags.v1.FlagChangeService";

/// The Connect path of `WatchChanges`.
pub const WATCH_PATH: &str = "/pbflags.v1.FlagChangeService/WatchChanges";

fn wire(sequence: u64, kind: &ChangeKind, origin_unix_ms: i64) -> WatchChangesResponse {
    let (kind, flag_id, entity_id) = match kind {
        ChangeKind::Flag { flag_id } => (WireKind::Flag, flag_id.to_string(), String::new()),
        ChangeKind::Override { flag_id, entity_id } => (
            WireKind::Override,
            flag_id.to_string(),
            entity_id.to_string(),
        ),
        ChangeKind::Resync => (WireKind::Resync, String::new(), String::new()),
    };
    WatchChangesResponse {
        sequence,
        kind: kind as i32,
        flag_id,
        entity_id,
        origin_unix_ms,
    }
}

fn heartbeat(sequence: u64) -> WatchChangesResponse {
    WatchChangesResponse {
        sequence,
        kind: WireKind::Heartbeat as i32,
        ..WatchChangesResponse::default()
    }
}

fn of_event(e: &Event) -> WatchChangesResponse {
    wire(e.sequence, &e.change.kind, e.change.origin_unix_ms)
}

/// Subscribes to `engine`'s changes, or refuses at the cap.
fn subscribe(engine: &Engine) -> Result<Subscription, Status> {
    engine.hub().subscribe().ok_or_else(|| {
        Status::resource_exhausted(
            "too many change stream subscribers (--max-watchers); retry later",
        )
    })
}

/// The messages of one subscription, ending with an error if the subscriber fell behind.
fn messages(
    subscription: Subscription,
    beat: Duration,
) -> BoxStream<'static, Result<WatchChangesResponse, Status>> {
    struct State {
        sub: Subscription,
        ticker: tokio::time::Interval,
        last: u64,
        greeted: bool,
        done: bool,
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = subscription.start;
    let state = State {
        sub: subscription,
        ticker,
        last: start,
        greeted: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        if !s.greeted {
            s.greeted = true;
            return Some((Ok(heartbeat(s.last)), s));
        }
        let item = tokio::select! {
            next = s.sub.next() => match next {
                Next::Event(e) => {
                    s.last = e.sequence;
                    Ok(of_event(&e))
                }
                Next::Behind => {
                    s.done = true;
                    Err(Status::resource_exhausted(
                        "change stream subscriber fell behind; subscribe again",
                    ))
                }
                Next::Closed => return None,
            },
            _ = s.ticker.tick() => Ok(heartbeat(s.last)),
        };
        Some((item, s))
    })
    .boxed()
}

/// The gRPC service.
#[derive(Clone)]
pub struct ChangeService {
    engine: Arc<Engine>,
    beat: Duration,
}

impl ChangeService {
    /// Streams `engine`'s changes with a heartbeat every `beat`.
    pub fn new(engine: Arc<Engine>, beat: Duration) -> Self {
        Self { engine, beat }
    }
}

#[tonic::async_trait]
impl FlagChangeService for ChangeService {
    type WatchChangesStream = BoxStream<'static, Result<WatchChangesResponse, Status>>;

    async fn watch_changes(
        &self,
        _request: tonic::Request<WatchChangesRequest>,
    ) -> Result<tonic::Response<Self::WatchChangesStream>, Status> {
        let sub = subscribe(&self.engine)?;
        Ok(tonic::Response::new(messages(sub, self.beat)))
    }
}

/// The codec of a Connect streaming content type.
fn streaming_codec(headers: &HeaderMap) -> Option<Codec> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    match ct.split(';').next()?.trim() {
        "application/connect+proto" => Some(Codec::Proto),
        "application/connect+json" => Some(Codec::Json),
        _ => None,
    }
}

/// One Connect envelope: flags, big-endian length, payload.
fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    b.put_slice(payload);
    b.freeze()
}

/// The end-of-stream envelope (flag 0x02): `{}` or `{"error":{…}}`.
fn end_of_stream(error: Option<&Status>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some(s) => serde_json::json!({
            "error": { "code": connect_name(s.code()), "message": s.message() }
        }),
    };
    envelope(0x02, body.to_string().as_bytes())
}

/// `WatchChanges` over Connect server streaming. The request is one envelope holding an (empty)
/// `WatchChangesRequest`; refusals before the stream starts are answered in the end-of-stream
/// envelope of an otherwise empty 200 response, as the protocol has it (an unsupported content
/// type is 415).
pub async fn connect_watch(
    engine: Arc<Engine>,
    beat: Duration,
    request: http::Request<Body>,
) -> Response {
    let Some(codec) = streaming_codec(request.headers()) else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "WatchChanges takes application/connect+proto or application/connect+json",
        )
            .into_response();
    };
    let content_type = match codec {
        Codec::Proto => "application/connect+proto",
        Codec::Json => "application/connect+json",
    };
    let respond = |body: Body| {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let refuse = |status: Status| respond(Body::from(end_of_stream(Some(&status))));
    let encoding = request
        .headers()
        .get("connect-content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    if encoding != "identity" {
        return refuse(Status::unimplemented(format!(
            "connect-content-encoding {encoding:?} is not supported on WatchChanges; send identity"
        )));
    }
    // The request message is empty; anything beyond one small envelope is refused.
    let body = match crate::server::rpc::read_body(request.into_body(), 1024).await {
        Ok(b) => b,
        Err(s) => return refuse(s),
    };
    if body.len() < 5
        || body[0] != 0
        || usize::try_from(u32::from_be_bytes([body[1], body[2], body[3], body[4]])).ok()
            != Some(body.len() - 5)
    {
        return refuse(Status::invalid_argument(
            "WatchChanges request: expected one uncompressed envelope holding a WatchChangesRequest",
        ));
    }
    if let Err(s) = connect::decode::<WatchChangesRequest>(codec, &body[5..], "WatchChangesRequest")
    {
        return refuse(s);
    }
    let sub = match subscribe(&engine) {
        Ok(sub) => sub,
        Err(s) => return refuse(s),
    };
    let frames = messages(sub, beat).map(move |item| match item {
        Ok(m) => match connect::encode(codec, &m, "WatchChangesResponse") {
            Ok(bytes) => (envelope(0, &bytes), false),
            Err(s) => (end_of_stream(Some(&s)), true),
        },
        Err(s) => (end_of_stream(Some(&s)), true),
    });
    // A stream that ends without an error (the server shutting down) ends with `{}`.
    let frames =
        futures_util::stream::unfold((frames.boxed(), false), |(mut frames, ended)| async move {
            if ended {
                return None;
            }
            match frames.next().await {
                Some((bytes, last)) => {
                    Some((Ok::<_, std::convert::Infallible>(bytes), (frames, last)))
                }
                None => Some((Ok(end_of_stream(None)), (frames, true))),
            }
        });
    respond(Body::from_stream(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::changes::{CAPACITY, Change, Hub};

    fn flag(i: usize) -> Change {
        Change::now(ChangeKind::Flag {
            flag_id: format!("f/{i}").into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_greets_relays_beats_and_ends_a_subscriber_that_fell_behind() {
        let hub = Hub::new(8, None);
        hub.publish(flag(0));
        let mut s = messages(hub.subscribe().unwrap(), Duration::from_secs(5));
        let hello = s.next().await.unwrap().unwrap();
        assert_eq!(
            (hello.kind, hello.sequence),
            (WireKind::Heartbeat as i32, 1)
        );
        hub.publish(flag(1));
        let e = s.next().await.unwrap().unwrap();
        assert_eq!(
            (e.kind, e.sequence, e.flag_id.as_str()),
            (WireKind::Flag as i32, 2, "f/1")
        );
        // Idle: a heartbeat repeating the last number.
        let beat = s.next().await.unwrap().unwrap();
        assert_eq!((beat.kind, beat.sequence), (WireKind::Heartbeat as i32, 2));
        // More than the ring holds while the subscriber does not read: it is ended, not buffered.
        for i in 0..CAPACITY + 1 {
            hub.publish(flag(i));
        }
        let end = s.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(s.next().await.is_none());
    }

    #[test]
    fn end_of_stream_envelopes_carry_the_error_as_json() {
        let ok = end_of_stream(None);
        assert_eq!((ok[0], &ok[5..]), (0x02, &b"{}"[..]));
        let e = end_of_stream(Some(&Status::resource_exhausted("full")));
        let json: serde_json::Value = serde_json::from_slice(&e[5..]).unwrap();
        assert_eq!(json["error"]["code"], "resource_exhausted");
        assert_eq!(
            u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
            e.len() - 5
        );
    }
}
