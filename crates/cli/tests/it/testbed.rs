//! Test hosts built from Linux network namespaces: each host has one interface to a router namespace
//! that forwards between them. Every veth pair is created with both ends inside test namespaces, so
//! nothing is attached to the machine's own network, and the router has no default route: no packet
//! can leave the machine even if isolation breaks. Each namespace gets a resolv.conf pointing at
//! 127.0.0.1, so even name lookups stay inside. Hosts use addresses from 198.18.0.0/15 only.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Testbed {
    /// Host name → (namespace, address).
    hosts: Vec<(String, String, String)>,
    router: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn netns_add(ns: &str) {
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    ip(&["netns", "add", ns]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
    let etc = Path::new("/etc/netns").join(ns);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
}

impl Testbed {
    /// Builds hosts `(name, address/prefix)`; the router takes the `.1` of each host's subnet.
    pub fn build(tag: &str, hosts: &[(&str, &str)]) -> Testbed {
        for (_, cidr) in hosts {
            assert!(cidr.starts_with("198.18.") || cidr.starts_with("198.19."), "test hosts live in 198.18.0.0/15");
        }
        let prefix = format!("cv{}{}", tag, std::process::id() % 100_000);
        let router = format!("{prefix}-rtr");
        netns_add(&router);
        Command::new("ip").args(["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]).status().unwrap();
        let mut bed = Testbed { hosts: Vec::new(), router: router.clone(), children: Vec::new() };
        for (i, (name, cidr)) in hosts.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            netns_add(&ns);
            let (addr, len) = cidr.split_once('/').unwrap();
            let octets: Vec<&str> = addr.split('.').collect();
            let gateway = format!("{}.{}.{}.1", octets[0], octets[1], octets[2]);
            let r_if = format!("r{i}");
            ip(&["link", "add", &r_if, "netns", &router, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &router, "addr", "add", &format!("{gateway}/{len}"), "dev", &r_if]);
            ip(&["-n", &router, "link", "set", &r_if, "up"]);
            ip(&["-n", &ns, "addr", "add", cidr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", &gateway]);
            bed.hosts.push((name.to_string(), ns, addr.to_string()));
        }
        bed
    }

    pub fn ns(&self, host: &str) -> String {
        self.hosts.iter().find(|(n, _, _)| n == host).unwrap_or_else(|| panic!("no host {host}")).1.clone()
    }

    /// A command that runs on `host`.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// Starts a long-running process on `host`; it is killed with the testbed.
    pub fn spawn(&mut self, mut command: Command) -> &mut Child {
        let child = command.stdout(Stdio::null()).spawn().unwrap();
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    /// Runs a TCP and UDP listener on `addr:port` of `host` that logs every connection, byte and datagram.
    pub fn listen(&mut self, host: &str, addr: &str, port: u16, log: &Path) {
        let code = r#"
import socket, sys, threading
addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); tcp.bind((addr, port)); tcp.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((addr, port))
def serve_udp():
    while True:
        data, peer = udp.recvfrom(65536)
        note(f"datagram {len(data)} from {peer}")
threading.Thread(target=serve_udp, daemon=True).start()
note("ready")
while True:
    conn, peer = tcp.accept()
    note(f"connection from {peer}")
    data = conn.recv(65536)
    note(f"bytes {len(data)}")
    conn.close()
"#;
        let mut c = self.command(host, "/usr/bin/python3");
        c.args(["-c", code, addr, &port.to_string()]).arg(log);
        self.spawn(c);
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(log).unwrap_or_default().contains("ready") {
            assert!(start.elapsed().as_secs() < 20, "listener on {addr}:{port} did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut all: Vec<String> = self.hosts.iter().map(|(_, ns, _)| ns.clone()).collect();
        all.push(self.router.clone());
        for ns in all {
            // Only processes this test started live in its namespaces.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
        }
    }
}
