//! The dashboard's response body: a whole document, or the event stream.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;

use crate::Substation;

/// The body of a dashboard response: a whole document, or an endless event stream
/// whose next events are made only when the connection has taken the last ones.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Box<Events>),
}

struct Events {
    substation: Substation,
    ticks: tokio::time::Interval,
}

impl Body {
    pub(super) fn full(bytes: Vec<u8>) -> Self {
        Body {
            kind: Kind::Full(Some(Bytes::from(bytes))),
        }
    }

    pub(super) fn stream(substation: Substation, interval: Duration) -> Self {
        let mut ticks = tokio::time::interval(interval);
        // A client that did not take an interval's events misses it: nothing queues.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Body {
            kind: Kind::Stream(Box::new(Events { substation, ticks })),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Full(_) => "full",
            Kind::Stream(_) => "stream",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(events) => {
                std::task::ready!(events.ticks.poll_tick(cx));
                let text = super::hystrix::events(&events.substation);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => http_body::SizeHint::with_exact(0),
            Kind::Stream(_) => http_body::SizeHint::default(),
        }
    }
}
