//! Per-client and per-address limits on sign-up, resend and login.
//! In-process (per instance); put a gateway limit in front for a global one.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitSettings;

/// Both limiters, or none when turned off.
#[derive(Clone)]
pub struct Limits {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    client: DefaultKeyedRateLimiter<String>,
    address: DefaultKeyedRateLimiter<String>,
}

impl Limits {
    /// Limiters as configured.
    pub fn new(settings: RateLimitSettings) -> Self {
        if !settings.enabled {
            return Self { inner: None };
        }
        let per_minute = NonZeroU32::new(settings.client_per_minute).unwrap_or(NonZeroU32::MIN);
        let per_hour = NonZeroU32::new(settings.address_per_hour).unwrap_or(NonZeroU32::MIN);
        Self {
            inner: Some(Arc::new(Inner {
                client: RateLimiter::keyed(Quota::per_minute(per_minute)),
                address: RateLimiter::keyed(Quota::per_hour(per_hour)),
            })),
        }
    }

    /// `Err(wait)` when the client or the address is over its limit.
    pub fn check(&self, client: &str, address: Option<&str>) -> Result<(), Duration> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let now = DefaultClock::default().now();
        inner
            .client
            .check_key(&client.to_owned())
            .map_err(|n| n.wait_time_from(now))?;
        if let Some(address) = address {
            inner
                .address
                .check_key(&address.to_owned())
                .map_err(|n| n.wait_time_from(now))?;
        }
        Ok(())
    }

    /// Forgets keys whose limits have fully replenished (keeps memory bounded).
    pub fn purge(&self) {
        if let Some(inner) = &self.inner {
            inner.client.retain_recent();
            inner.client.shrink_to_fit();
            inner.address.retain_recent();
            inner.address.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client_and_per_address() {
        let l = Limits::new(RateLimitSettings {
            enabled: true,
            client_per_minute: 3,
            address_per_hour: 2,
        });
        assert!(l.check("1.2.3.4", Some("a@x")).is_ok());
        assert!(l.check("1.2.3.4", Some("a@x")).is_ok());
        let wait = l.check("5.6.7.8", Some("a@x")).unwrap_err();
        assert!(wait > Duration::from_secs(60), "{wait:?}");
        assert!(l.check("1.2.3.4", Some("b@x")).is_ok());
        assert!(l.check("1.2.3.4", Some("c@x")).is_err());
        let off = Limits::new(RateLimitSettings {
            enabled: false,
            client_per_minute: 1,
            address_per_hour: 1,
        });
        for _ in 0..10 {
            assert!(off.check("1.2.3.4", Some("a@x")).is_ok());
        }
    }
}
