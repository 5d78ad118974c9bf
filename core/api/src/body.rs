//! How request bodies are read: JSON objects only where an object is meant, and a body that
//! stops arriving times out instead of holding a worker's connection.

use std::{
    future::Future as _,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{dev::Payload, error::PayloadError, web::Bytes};
use futures_core::Stream;
use serde::{Deserialize, Deserializer, de};

/// A JSON object deserialised as `T`. serde lets a struct come from a JSON array of its fields
/// in order; a request body is an object or refused.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visit<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(Visit(PhantomData)).map(Object)
    }
}

/// A request body that fails with a `TimedOut` I/O error when no bytes arrive for `idle`.
pub struct IdleTimeout {
    inner: Payload,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl IdleTimeout {
    /// Wraps `inner`; the clock starts when the body is first read.
    pub fn new(inner: Payload, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            expired: false,
        }
    }
}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let deadline = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(item)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.expired = true;
                    let message = format!("no body bytes arrived for {} s", self.idle.as_secs());
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        message,
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
