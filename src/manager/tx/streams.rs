//! The statements of a [`Tx`] whose answer is a stream, or that are fed
//! one: `query_raw`, `copy_in`, `copy_out`. Each error is watched, a stream
//! dropped before its end is noted (an error in it would be lost with it),
//! and a transaction from `begin()` keeps its deadline while streaming.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::time::sleep_until;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::BorrowToSql;
use tokio_postgres::{Row, ToStatement};

use super::{never, Form, StatementText, Tx};
use crate::failure::error::Error;
use crate::manager::session::PgError;
use crate::manager::watch::Unfinished;

impl Tx<'_> {
    /// tokio-postgres's `query_raw`: the rows as a stream, each error
    /// watched. A stream dropped before its end counts as an answer left
    /// unread (the server is asked before `COMMIT`).
    pub async fn query_raw<T, P, I>(
        &self,
        statement: &T,
        params: I,
    ) -> Result<impl Stream<Item = Result<Row, Error>> + Send + '_, Error>
    where
        T: ?Sized + ToStatement + StatementText,
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let rows = self.parts().0.object().query_raw(statement, params);
        let stream = self.send(statement.text(), never(), pin!(rows)).await?;
        Ok(self.watched(stream))
    }

    /// `COPY … FROM STDIN` fed from `data`, watched; returns the rows
    /// copied. An error from `data` aborts the `COPY` (and so the
    /// transaction) and comes back as
    /// [`ErrorKind::Aborted`](crate::error::ErrorKind::Aborted).
    pub async fn copy_in<T, S, B, E>(&self, statement: &T, data: S) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement + StatementText,
        S: Stream<Item = Result<B, E>> + Send,
        B: Buf + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (session, opening) = self.parts();
        let copy = async {
            let sink = session.object().copy_in::<T, B>(statement).await?;
            let mut sink = std::pin::pin!(sink);
            let mut data = std::pin::pin!(data);
            while let Some(chunk) = data.next().await {
                match chunk {
                    Ok(chunk) => sink.send(chunk).await?,
                    // Dropping the sink unfinished sends `CopyFail`: the
                    // server fails the COPY and says so to no one.
                    Err(error) => return Ok(Err(error)),
                }
            }
            sink.as_mut().finish().await.map(Ok)
        };
        match self.send(statement.text(), never(), pin!(copy)).await? {
            Ok(rows) => Ok(rows),
            Err(error) => {
                opening.watch().note(SqlState::QUERY_CANCELED);
                Err(Error::aborted(error))
            }
        }
    }

    /// `COPY … TO STDOUT`: its data as a stream, each error watched (a
    /// stream dropped before its end counts as an answer left unread).
    pub async fn copy_out<T>(
        &self,
        statement: &T,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + '_, Error>
    where
        T: ?Sized + ToStatement + StatementText,
    {
        let copy = self.parts().0.object().copy_out(statement);
        let stream = self.send(statement.text(), never(), pin!(copy)).await?;
        Ok(self.watched(stream))
    }

    /// A statement's answer as a stream: errors watched, a stream dropped
    /// before its end noted, the deadline of a transaction from `begin()`
    /// kept.
    fn watched<'s, I: 's>(
        &'s self,
        stream: impl Stream<Item = Result<I, PgError>> + Send + 's,
    ) -> impl Stream<Item = Result<I, Error>> + Send + 's {
        let watch = self.parts().1.watch();
        let mut unfinished = Some(Unfinished::new(watch));
        let mut stream = Box::pin(stream);
        let mut deadline = match &self.form {
            Form::Lent { .. } => None,
            Form::Owned(explicit) => Some(Box::pin(sleep_until(explicit.deadline()))),
        };
        futures_util::stream::poll_fn(move |cx| {
            if unfinished.is_none() {
                return Poll::Ready(None);
            }
            let item = match stream.as_mut().poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => {
                    return match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                        Some(Poll::Ready(())) => {
                            // Left unread: the finish guard is dropped armed.
                            unfinished = None;
                            Poll::Ready(Some(Err(self.timed_out())))
                        }
                        _ => Poll::Pending,
                    };
                }
            };
            match item {
                Some(Ok(item)) => Poll::Ready(Some(Ok(item))),
                Some(Err(error)) => {
                    if let Some(guard) = unfinished.take() {
                        guard.finish();
                    }
                    if let Some(code) = error.code() {
                        watch.note(code.clone());
                    }
                    Poll::Ready(Some(Err(self.failed(error))))
                }
                None => {
                    if let Some(guard) = unfinished.take() {
                        guard.finish();
                    }
                    Poll::Ready(None)
                }
            }
        })
    }
}
