//! How many connections the listeners hold open at once. Any host of the private networks can open
//! connections without a token and keep them open: unbounded, a single host could take every file
//! descriptor the control plane has and shut out workers and users alike. So each source address
//! holds at most [`PER_SOURCE`] connections at once (trusted proxies, which carry many clients, are
//! held only to the total), and all of them together at most [`TOTAL`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections one source address may hold open at once: far more than a worker's or a browser's
/// pool of keep-alive connections.
pub const PER_SOURCE: usize = 256;
/// Connections all sources together may hold open, well under the descriptors a process gets.
pub const TOTAL: usize = 8192;

#[derive(Default)]
pub struct Connections {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One open connection, counted until it is dropped.
pub struct Held {
    connections: Arc<Connections>,
    source: IpAddr,
}

impl Connections {
    /// Counts a new connection from `source`, or says why it is refused.
    pub fn open(self: &Arc<Self>, source: IpAddr, per_source: bool) -> Result<Held, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= TOTAL {
            return Err(format!("the control plane holds {TOTAL} connections already"));
        }
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if per_source && from_source >= PER_SOURCE {
            return Err(format!("{source} holds {PER_SOURCE} connections already"));
        }
        open.total += 1;
        *open.by_source.entry(source).or_default() += 1;
        Ok(Held { connections: self.clone(), source })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_its_share_and_gets_it_back_as_connections_close() {
        let connections = Arc::new(Connections::default());
        let (one, two): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let mut held: Vec<Held> = (0..PER_SOURCE).map(|_| connections.open(one, true).unwrap()).collect();
        let refused = connections.open(one, true).err().expect("a source past its share is refused");
        assert!(refused.contains("holds 256 connections already"), "{refused}");
        let _other = connections.open(two, true).expect("another source is not held back");
        let proxy: IpAddr = "198.18.0.3".parse().unwrap();
        let proxied: Vec<Held> = (0..=PER_SOURCE).map(|_| connections.open(proxy, false).unwrap()).collect();
        held.pop();
        let _again = connections.open(one, true).expect("a closed connection gives its place back");
        drop((held, proxied));
        let open = connections.open.lock().unwrap();
        assert_eq!((open.total, open.by_source.get(&one), open.by_source.get(&proxy)), (2, Some(&1), None));
    }

    /// All sources together hold at most the total, a trusted proxy's connections included, and a
    /// connection that closes gives its place back.
    #[test]
    fn all_sources_together_hold_at_most_the_total() {
        let connections = Arc::new(Connections::default());
        let proxy: IpAddr = "198.18.0.3".parse().unwrap();
        let mut held: Vec<Held> = (0..TOTAL).map(|_| connections.open(proxy, false).unwrap()).collect();
        let refused = connections.open("198.18.0.9".parse().unwrap(), true).err().expect("past the total");
        assert_eq!(refused, "the control plane holds 8192 connections already");
        assert!(connections.open(proxy, false).is_err(), "a trusted proxy is held to the total too");
        held.pop();
        let _again =
            connections.open("198.18.0.9".parse().unwrap(), true).expect("a closed connection gives its place back");
    }
}
