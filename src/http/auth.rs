//! Console access: the login (the password is `[http] token`), the session
//! table, CSRF tokens and the login rate limit.
//!
//! - A login sets `sluice_session=<random 128-bit id>; HttpOnly;
//!   SameSite=Strict; Path=/`. The session lives in memory here (a restart
//!   logs everyone out) and ends after `[http] session_timeout` without a
//!   request, or at logout.
//! - Each session has its own random CSRF token; every console form carries
//!   it in a hidden `csrf` field and every POST is refused (403) unless it
//!   matches. The login form, before any session exists, is protected the
//!   same way by a pre-session cookie (`sluice_login`) that the form must echo.
//! - Login attempts are limited per client IP: [`LOGIN_ATTEMPTS`] in
//!   [`LOGIN_WINDOW`], then 429 with `Retry-After` until the window moves on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use super::token_matches;

/// Session cookie name.
pub const SESSION_COOKIE: &str = "sluice_session";
/// Pre-session cookie of the login form (its CSRF token).
pub const LOGIN_COOKIE: &str = "sluice_login";
/// Login attempts allowed per client IP in [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: usize = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Sessions kept at most; the oldest goes first beyond that.
const MAX_SESSIONS: usize = 1000;

/// A random token: 128 bits, hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    last_seen: Instant,
}

/// The session table.
pub struct Sessions {
    timeout: Duration,
    table: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(timeout: Duration) -> Sessions {
        Sessions {
            timeout,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// A new session: (id for the cookie, its CSRF token).
    pub fn create(&self) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let now = Instant::now();
        let mut t = self.table.lock().expect("session table");
        t.retain(|_, s| now.duration_since(s.last_seen) < self.timeout);
        if t.len() >= MAX_SESSIONS {
            if let Some(oldest) = t
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                t.remove(&oldest);
            }
        }
        t.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                last_seen: now,
            },
        );
        (id, csrf)
    }

    /// The live session `id` names (and it lives on), or None (expired ones go).
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut t = self.table.lock().expect("session table");
        let s = t.get_mut(id)?;
        if now.duration_since(s.last_seen) >= self.timeout {
            t.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// Is `id` a live session (without extending it)?
    pub fn alive(&self, id: &str) -> bool {
        let t = self.table.lock().expect("session table");
        t.get(id)
            .is_some_and(|s| s.last_seen.elapsed() < self.timeout)
    }

    pub fn remove(&self, id: &str) {
        self.table.lock().expect("session table").remove(id);
    }
}

/// Login attempts per client IP in a sliding window.
pub struct LoginLimiter {
    max: usize,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max: usize, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Count an attempt: Ok, or Err(seconds until one is allowed again).
    pub fn attempt(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("login limiter");
        seen.retain(|_, q| {
            q.back()
                .is_some_and(|t| now.duration_since(*t) < self.window)
        });
        let q = seen.entry(ip).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max {
            let wait = q
                .front()
                .map(|t| self.window.saturating_sub(now.duration_since(*t)))
                .unwrap_or(self.window);
            return Err(wait.as_secs().max(1));
        }
        q.push_back(now);
        Ok(())
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` for a console cookie (empty value and Max-Age=0 clears it).
pub fn set_cookie(name: &str, value: &str) -> String {
    let clear = if value.is_empty() { "; Max-Age=0" } else { "" };
    format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/{clear}")
}

/// Does a form's CSRF field match the expected token (constant time)?
pub fn csrf_ok(given: Option<&str>, want: &str) -> bool {
    !want.is_empty() && given.is_some_and(|g| token_matches(g, want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::new(Duration::from_millis(80));
        let (id, csrf) = s.create();
        assert_eq!(id.len(), 32);
        assert_ne!(id, csrf);
        assert_eq!(s.touch(&id).unwrap().csrf, csrf);
        assert!(s.touch("nope").is_none());
        std::thread::sleep(Duration::from_millis(120));
        assert!(s.touch(&id).is_none(), "expired");
        let (id, _) = s.create();
        s.remove(&id);
        assert!(s.touch(&id).is_none(), "logged out");
    }

    #[test]
    fn login_attempts_are_limited_per_ip() {
        let l = LoginLimiter::new(3, Duration::from_millis(200));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.attempt(a).is_ok());
        }
        assert!(l.attempt(a).is_err());
        assert!(l.attempt(b).is_ok(), "another client is not limited");
        std::thread::sleep(Duration::from_millis(250));
        assert!(l.attempt(a).is_ok(), "the window moved on");
    }

    #[test]
    fn cookies_and_csrf() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; sluice_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(SESSION_COOKIE, "abc");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        assert!(set_cookie(SESSION_COOKIE, "").contains("Max-Age=0"));
        assert!(csrf_ok(Some("t0k"), "t0k"));
        assert!(!csrf_ok(Some("t0j"), "t0k"));
        assert!(!csrf_ok(None, "t0k"));
        assert!(!csrf_ok(Some(""), ""));
    }
}
