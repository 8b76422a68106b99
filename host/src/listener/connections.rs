//! How many client connections may be open at once, in all and per client
//! address (`[server] max_connections`, `max_connections_per_ip`). A
//! connection beyond either is closed as soon as it is accepted, before a
//! byte is read: one client cannot hold every file descriptor.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The connections open now.
#[derive(Debug)]
pub struct ConnectionLimits {
    max: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl ConnectionLimits {
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, or says which limit it is over.
    /// The count goes down when the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(Refused::Total);
        }
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *from_ip += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // The map holds only addresses with a connection open.
                per_ip.remove(&self.ip);
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises this process's open-files limit to its hard limit, as servers do
/// (a shell's default of 1024 is less than `max_connections`); returns the
/// limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn refuses_beyond_the_per_ip_limit_and_frees_on_drop() {
        let limits = ConnectionLimits::new(10, 2);
        let a = limits.admit(ip(1)).unwrap();
        let _b = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refused::PerIp);
        // Another address is not affected.
        let _c = limits.admit(ip(2)).unwrap();
        drop(a);
        assert!(limits.admit(ip(1)).is_ok());
    }

    #[test]
    fn refuses_beyond_the_total_limit() {
        let limits = ConnectionLimits::new(2, 2);
        let _a = limits.admit(ip(1)).unwrap();
        let b = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).unwrap_err(), Refused::Total);
        drop(b);
        assert_eq!(limits.open(), 1);
        assert!(limits.admit(ip(3)).is_ok());
        assert!(limits.per_ip.lock().unwrap().len() <= 2);
    }
}
