//! Request and token rate limits of one backend (`rpm`, `tpm`), as token buckets (governor's
//! GCRA). A call waits for capacity instead of failing: a provider's 429 costs a round trip and a
//! backoff, waiting here costs neither.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub(crate) struct RateLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl RateLimits {
    /// Requests per minute and tokens per minute; `None` (or 0) is unlimited. A minute's worth
    /// may be used at once (the burst), as providers' per-minute limits allow.
    pub(crate) fn new(rpm: Option<u32>, tpm: Option<u64>) -> RateLimits {
        let requests = rpm
            .and_then(NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_minute(n)));
        let tokens = tpm
            .and_then(|t| NonZeroU32::new(t.min(u32::MAX as u64) as u32))
            .map(|n| (RateLimiter::direct(Quota::per_minute(n)), n));
        RateLimits { requests, tokens }
    }

    /// Waits until one request of about `tokens` tokens fits both budgets. A request larger than
    /// a whole minute of tokens waits for a full bucket and then goes.
    pub(crate) async fn acquire(&self, tokens: u64) {
        if let Some(r) = &self.requests {
            r.until_ready().await;
        }
        if let Some((t, cap)) = &self.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, cap.get() as u64) as u32).expect("at least 1");
            let _ = t.until_n_ready(n).await;
        }
    }

    #[cfg(test)]
    fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Takes capacity for one request if there is some now.
    #[cfg(test)]
    fn try_acquire(&self, tokens: u64) -> bool {
        if let Some((t, cap)) = &self.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, cap.get() as u64) as u32).expect("at least 1");
            if !matches!(t.check_n(n), Ok(Ok(()))) {
                return false;
            }
        }
        self.requests.as_ref().is_none_or(|r| r.check().is_ok())
    }
}

/// A rough token count of a prompt plus what may be generated, for the `tpm` budget.
pub(crate) fn estimate_tokens(prompt: &str, max_tokens: u32) -> u64 {
    (prompt.len() as u64).div_ceil(4) + max_tokens as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_minute_wait() {
        let l = RateLimits::new(Some(3), None);
        assert!(l.try_acquire(1) && l.try_acquire(1) && l.try_acquire(1));
        assert!(
            !l.try_acquire(1),
            "the fourth request of the minute must wait"
        );
    }

    #[test]
    fn tokens_beyond_the_minute_wait() {
        let l = RateLimits::new(None, Some(1000));
        assert!(l.try_acquire(900));
        assert!(
            !l.try_acquire(200),
            "1,100 tokens do not fit a 1,000 tpm budget"
        );
        assert!(l.try_acquire(50));
    }

    #[test]
    fn no_limits_never_wait() {
        let l = RateLimits::new(None, Some(0));
        assert!(l.is_unlimited());
        assert!((0..10_000).all(|_| l.try_acquire(1_000_000)));
    }

    #[tokio::test]
    async fn acquire_returns_at_once_within_the_budget() {
        let l = RateLimits::new(Some(100), Some(100_000));
        for _ in 0..50 {
            l.acquire(estimate_tokens("hello", 16)).await;
        }
    }
}
