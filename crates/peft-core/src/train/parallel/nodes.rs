//! The node level of a run over several processes: each node's first peer sends the node's
//! sum to the coordinator (`peft coordinator`, [`serve_coordinator`]), which adds the nodes'
//! vectors in rank order and sends the total back to every node.
//!
//! Why not `burn-collective`'s global level: in 0.21 its global all-reduce completes once and
//! then hangs on every later call, whatever the strategy. The barrier that ends each global
//! operation (`SyncService::sync` in `global/node/sync.rs`) clears a *copy* of its list of
//! synced nodes, so the next barrier never sees the list it waits for. A two-process repro is
//! in docs/parallel.md. The local level (threads of one process) does use `burn-collective`.
//!
//! The coordinator also makes failures explicit. When a node's connection closes before the
//! node said goodbye (its process died, its machine dropped off the network), the coordinator
//! tells every other node which node was lost, and their pending or next call fails naming it.
//! A node that hears nothing back within the run's timeout fails too. Before the first step,
//! every node sends its settings' fingerprints, and each node refuses a run whose nodes
//! disagree, naming the node and the setting.
//!
//! The wire format is length-prefixed frames over TCP: one tag byte, a little-endian u64
//! length, then the payload.

use std::{
    io::{BufReader, BufWriter, Read, Write},
    net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::error::{PeftError, Result};

const HELLO: u8 = 1;
const ROWS: u8 = 2;
const VALUES: u8 = 3;
const LOST: u8 = 4;
const REFUSED: u8 = 5;
const BYE: u8 = 6;

/// How long a node keeps trying to reach the coordinator.
pub const CONNECT_FOR: Duration = Duration::from_secs(120);

/// The longest frame accepted (a gradient of 256 M values).
const MAX_FRAME: u64 = 1 << 30;

fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(payload.len() as u64).to_le_bytes())?;
    w.write_all(payload)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A node's connection to the coordinator.
#[derive(Debug)]
pub struct NodeLink {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    rank: usize,
    timeout: Duration,
}

impl NodeLink {
    /// Connects node `rank` of `nodes` to the coordinator at `address` (retrying for up to
    /// [`CONNECT_FOR`] or `timeout`, whichever is shorter, so nodes may start before it), then
    /// waits for every node and checks that they all agree on `settings`.
    pub fn join(
        address: &str,
        rank: usize,
        nodes: usize,
        settings: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Self> {
        let started = Instant::now();
        let connect_for = timeout.min(CONNECT_FOR);
        let stream = loop {
            let attempt = address
                .to_socket_addrs()
                .map_err(|e| PeftError::Invalid(format!("--coordinator {address}: {e}")))?
                .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
            match attempt {
                Some(s) => break s,
                None if started.elapsed() < connect_for => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                None => {
                    return Err(PeftError::Training(format!(
                        "node {rank}: no coordinator answered at {address} within {} s (start it first: `peft coordinator --port PORT`)",
                        connect_for.as_secs()
                    )));
                }
            }
        };
        let io = |e: std::io::Error| {
            PeftError::Training(format!("node {rank}: the coordinator at {address}: {e}"))
        };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        let mut link = Self {
            reader: BufReader::new(stream.try_clone().map_err(io)?),
            writer: BufWriter::new(stream),
            rank,
            timeout,
        };
        let mut hello = vec![rank as u32, nodes as u32];
        hello.extend(settings.iter().map(|(_, v)| fnv1a(v.as_bytes())));
        write_frame(&mut link.writer, HELLO, &u32_bytes(&hello)).map_err(io)?;
        let rows = link.receive(ROWS, "joining the run")?;
        let rows = u32s(&rows);
        let width = settings.len() + 1;
        if rows.len() != width * nodes {
            return Err(PeftError::Training(format!(
                "node {rank}: the coordinator sent {} settings values for {nodes} nodes; are all nodes the same version of peft?",
                rows.len()
            )));
        }
        let first = &rows[1..width];
        for row in rows.chunks_exact(width) {
            for (i, (name, _)) in settings.iter().enumerate() {
                if row[1 + i] != first[i] {
                    return Err(PeftError::Invalid(format!(
                        "the nodes disagree on `{name}`: node {} has a different value than node 0; start every node with the same settings",
                        row[0]
                    )));
                }
            }
        }
        Ok(link)
    }

    /// Sends this node's vector and returns the sum over all nodes.
    pub fn all_reduce_sum(&mut self, values: &[f32]) -> Result<Vec<f32>> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_frame(&mut self.writer, VALUES, &bytes).map_err(|e| self.lost_coordinator(e))?;
        let sum = self.receive(VALUES, "summing gradients")?;
        Ok(sum
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Says goodbye: the coordinator stops counting this node as part of the run.
    pub fn finish(mut self) -> Result<()> {
        write_frame(&mut self.writer, BYE, &[]).map_err(|e| self.lost_coordinator(e))?;
        let _ = self.writer.get_ref().shutdown(Shutdown::Write);
        Ok(())
    }

    fn receive(&mut self, expected: u8, what: &str) -> Result<Vec<u8>> {
        match read_frame(&mut self.reader) {
            Ok((tag, payload)) if tag == expected => Ok(payload),
            Ok((LOST, payload)) => {
                let lost = u32s(&payload).first().copied().unwrap_or(u32::MAX);
                Err(PeftError::Training(format!(
                    "node {} stopped while {what}: node {lost} left the run (its connection to the coordinator closed: its process ended or its machine dropped off the network)",
                    self.rank
                )))
            }
            Ok((REFUSED, payload)) => Err(PeftError::Invalid(format!(
                "node {}: the coordinator refused the run: {}",
                self.rank,
                String::from_utf8_lossy(&payload)
            ))),
            Ok((tag, _)) => Err(PeftError::Training(format!(
                "node {}: unexpected message {tag} from the coordinator while {what}",
                self.rank
            ))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(PeftError::Training(format!(
                    "node {} stopped while {what}: no answer within {} s (--peer-timeout); a node may be stalled",
                    self.rank,
                    self.timeout.as_secs()
                )))
            }
            Err(e) => Err(self.lost_coordinator(e)),
        }
    }

    fn lost_coordinator(&self, e: std::io::Error) -> PeftError {
        PeftError::Training(format!(
            "node {}: lost the coordinator ({e}); is `peft coordinator` still running?",
            self.rank
        ))
    }
}

/// What a node's reader thread hands the coordinator's loop.
enum Event {
    Frame(usize, u8, Vec<u8>),
    Closed(usize),
}

/// Serves runs, one after another, on `listener` (`peft coordinator`): waits for the nodes of a
/// run, relays their settings, sums their vectors in rank order, and reports a node whose
/// connection closes early to the others. Returns only on an error of the listener itself;
/// `runs` bounds the number of runs served (`None`: until the process ends).
pub fn serve_coordinator(listener: TcpListener, runs: Option<usize>) -> Result<()> {
    let mut served = 0;
    while runs.is_none_or(|n| served < n) {
        serve_run(&listener)?;
        served += 1;
    }
    Ok(())
}

fn serve_run(listener: &TcpListener) -> Result<()> {
    let mut writers: Vec<Option<BufWriter<TcpStream>>> = Vec::new();
    let mut rows: Vec<Option<Vec<u32>>> = Vec::new();
    let (tx, rx) = mpsc::channel::<Event>();
    let mut nodes = 0usize;
    // Joining: accept until every rank has said hello.
    while nodes == 0 || rows.iter().any(Option::is_none) {
        let (stream, peer) = listener
            .accept()
            .map_err(|e| PeftError::Training(format!("coordinator: accepting a node: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        let mut writer = BufWriter::new(stream);
        let Ok((HELLO, payload)) = read_frame(&mut reader) else {
            continue;
        };
        let hello = u32s(&payload);
        let (rank, count) = (hello.first().copied(), hello.get(1).copied());
        let (Some(rank), Some(count)) = (rank, count) else {
            continue;
        };
        let (rank, count) = (rank as usize, count as usize);
        if nodes == 0 {
            nodes = count;
            writers = (0..nodes).map(|_| None).collect();
            rows = vec![None; nodes];
        }
        let refuse = if count != nodes {
            Some(format!(
                "node {rank} ({peer}) was started with --nodes {count}, the run has {nodes}"
            ))
        } else if rank >= nodes {
            Some(format!("--node-rank {rank} is not below --nodes {nodes}"))
        } else if rows[rank].is_some() {
            Some(format!("two nodes were started with --node-rank {rank}"))
        } else {
            None
        };
        if let Some(why) = refuse {
            eprintln!("coordinator: refused {peer}: {why}");
            let _ = write_frame(&mut writer, REFUSED, why.as_bytes());
            continue;
        }
        eprintln!("coordinator: node {rank} of {nodes} joined from {peer}");
        let mut row = vec![rank as u32];
        row.extend_from_slice(&hello[2..]);
        rows[rank] = Some(row);
        writers[rank] = Some(writer);
        let tx = tx.clone();
        std::thread::spawn(move || {
            loop {
                match read_frame(&mut reader) {
                    Ok((tag, payload)) => {
                        let bye = tag == BYE;
                        if tx.send(Event::Frame(rank, tag, payload)).is_err() || bye {
                            return;
                        }
                    }
                    Err(_) => {
                        let _ = tx.send(Event::Closed(rank));
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let table: Vec<u32> = rows.into_iter().flatten().flatten().collect();
    let table = u32_bytes(&table);
    let mut writers: Vec<BufWriter<TcpStream>> = writers.into_iter().flatten().collect();
    for w in &mut writers {
        let _ = write_frame(w, ROWS, &table);
    }
    // Summing: one vector per node per round, added in rank order.
    let mut pending: Vec<Option<Vec<u8>>> = vec![None; nodes];
    let mut done = vec![false; nodes];
    while let Ok(event) = rx.recv() {
        match event {
            Event::Frame(rank, VALUES, payload) => {
                pending[rank] = Some(payload);
                if pending.iter().all(Option::is_some) {
                    let parts: Vec<Vec<u8>> = pending.iter_mut().flat_map(Option::take).collect();
                    let sum = sum_in_order(&parts);
                    for w in &mut writers {
                        let _ = write_frame(w, VALUES, &sum);
                    }
                }
            }
            Event::Frame(rank, BYE, _) => {
                done[rank] = true;
                if done.iter().all(|d| *d) {
                    eprintln!("coordinator: the run finished");
                    return Ok(());
                }
            }
            Event::Frame(rank, tag, _) => {
                eprintln!("coordinator: node {rank} sent unexpected message {tag}");
            }
            Event::Closed(rank) if !done[rank] => {
                eprintln!("coordinator: node {rank} left the run; telling the others");
                for w in &mut writers {
                    let _ = write_frame(w, LOST, &u32_bytes(&[rank as u32]));
                }
                return Ok(());
            }
            Event::Closed(_) => {}
        }
    }
    Ok(())
}

/// Adds little-endian f32 vectors in the given order; a shorter vector counts as zeros beyond
/// its end (the nodes send equal lengths).
fn sum_in_order(parts: &[Vec<u8>]) -> Vec<u8> {
    let len = parts.iter().map(Vec::len).max().unwrap_or(0) / 4;
    let mut sum = vec![0.0f32; len];
    for part in parts {
        for (s, c) in sum.iter_mut().zip(part.chunks_exact(4)) {
            *s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    sum.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// 32-bit FNV-1a: a setting's fingerprint (not a security hash).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_huge_lengths() {
        let mut buf = Vec::new();
        write_frame(&mut buf, VALUES, &[1, 2, 3]).expect("write");
        let (tag, payload) = read_frame(&mut buf.as_slice()).expect("read");
        assert_eq!((tag, payload), (VALUES, vec![1, 2, 3]));
        let mut huge = vec![VALUES];
        huge.extend((MAX_FRAME + 1).to_le_bytes());
        assert!(read_frame(&mut huge.as_slice()).is_err());
    }
}
