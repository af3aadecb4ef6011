//! Panics of the file readers, contained. arrow-ipc and parquet 60.1 panic on some malformed
//! inputs rather than return an error (the inputs are kept in `fuzz/regressions/`); a file a
//! user hands tutti, or an upload, must end in an error that names it, never in a panic that
//! takes a run or a server's request down.
//!
//! While a contained read runs, [`in_contained_read`] is true on its thread, so a panic hook
//! can tell a contained panic from a bug (the fuzz targets' hook aborts only on the latter).

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use futures::Stream;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside [`contain`] (or a [`Contained`] stream's poll): a panic here
/// becomes an error.
pub fn in_contained_read() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Installs a panic hook that passes every panic to the hook in place before (the default one
/// prints it; libFuzzer's aborts) except a contained one, which is only logged at debug level:
/// its message reaches the user in the error. Once per process; later calls do nothing.
pub fn quiet_contained_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if in_contained_read() {
                tracing::debug!(%info, "a reader panicked; contained as an error");
            } else {
                previous(info)
            }
        }));
    });
}

/// Runs `read`; a panic inside it becomes `Err` with the panic's message. Only for reading
/// inputs: what `read` touched is dropped with it, so no broken state is left behind.
pub fn contain<T>(read: impl FnOnce() -> T) -> Result<T, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(read));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|panic| panic_message(panic.as_ref()))
}

/// The message of a caught panic (`panic!` with a string or with format arguments).
fn panic_message(panic: &(dyn Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

/// A stream whose polls are contained: a panic becomes one `Err` item with its message, and
/// the stream ends after it.
pub(crate) struct Contained<S> {
    inner: Option<Pin<Box<S>>>,
}

impl<S> Contained<S> {
    pub(crate) fn new(inner: S) -> Contained<S> {
        Contained {
            inner: Some(Box::pin(inner)),
        }
    }
}

impl<S: Stream> Stream for Contained<S> {
    type Item = Result<S::Item, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match contain(|| inner.as_mut().poll_next(cx)) {
            Ok(poll) => poll.map(|item| item.map(Ok)),
            Err(panic) => {
                self.inner = None;
                Poll::Ready(Some(Err(panic)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(contain(|| 7), Ok(7));
        let slice: &[u8] = &[1, 2];
        let n = slice.len() + 3;
        let error = contain(|| slice[..n].len()).unwrap_err();
        assert!(error.contains("out of range"), "{error}");
        assert_eq!(
            contain(|| -> () { panic!("bad page {}", 3) }).unwrap_err(),
            "bad page 3"
        );
        assert!(!in_contained_read());
        assert!(contain(in_contained_read).unwrap());
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_with_the_panic_as_its_last_item() {
        let items = futures::stream::iter([1, 2, 0, 4]).map(|n| 8 / n);
        let got: Vec<_> = Contained::new(items).collect().await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[..2], [Ok(8), Ok(4)]);
        assert!(got[2].as_ref().unwrap_err().contains("divide by zero"));
    }
}
