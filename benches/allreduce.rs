//! Criterion: the cost of one data-parallel gradient sum (what a training step adds), for the
//! gradient sizes of SmolLM2-135M with 20 virtual tokens — a soft prompt (11 520 values) and a
//! prefix through its MLP (6 216 704 values with the default 512-wide MLP) — in the two layouts:
//! two peers of one process (`burn-collective`), and two nodes (processes) meeting at the
//! coordinator over TCP, simulated here by two threads on 127.0.0.1. The time is the first
//! peer's, from its call to its result; both peers call at the same moment, so it is the cost of
//! the exchange itself, not of waiting for a slower peer.
//!
//! `cargo bench --bench allreduce`

use std::{
    net::TcpListener,
    sync::Barrier,
    time::{Duration, Instant},
};

use burn::{backend::Flex, tensor::Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use peft_core::train::parallel::{
    Collective, burn_collective::Layout, nodes::serve_coordinator, peer_devices,
    peers::run_local_peers,
};

/// `(name, values)` of the gradients summed per step.
const SIZES: [(&str, usize); 2] = [("prompt", 20 * 576), ("prefix_mlp", 6_216_704)];

/// Times `iters` sums of `n` values by the first of the peers of `layout`.
fn time_sums(layout: &Layout, n: usize, iters: u64, barrier: &Barrier) -> Duration {
    run_local_peers::<Flex, _, _>(
        layout,
        &peer_devices::<Flex>(layout.devices),
        &[],
        |_, device, collective: &mut dyn Collective<Flex>| {
            let values = Tensor::<Flex, 1>::ones([n], device);
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                barrier.wait();
                let started = Instant::now();
                let sum = collective.all_reduce_sum(values.clone())?;
                let _ = sum.into_data();
                spent += started.elapsed();
            }
            Ok(spent)
        },
    )
    .expect("sums")
}

fn bench(c: &mut Criterion) {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    eprintln!("{machine}");
    let mut group = c.benchmark_group("allreduce");
    group.sample_size(10);
    for (name, n) in SIZES {
        group.throughput(Throughput::Bytes((4 * n) as u64));
        group.bench_function(BenchmarkId::new("local_2_peers", name), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(2);
                time_sums(&Layout::local(2), n, iters, &barrier)
            })
        });
        group.bench_function(BenchmarkId::new("tcp_2_nodes", name), |b| {
            b.iter_custom(|iters| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("address").to_string();
                let coordinator = std::thread::spawn(move || serve_coordinator(listener, Some(1)));
                let barrier = Barrier::new(2);
                let node = |rank| {
                    let layout = Layout::nodes(2, rank, address.clone(), 1);
                    time_sums(&layout, n, iters, &barrier)
                };
                let spent = std::thread::scope(|s| {
                    let other = s.spawn(|| node(1));
                    let spent = node(0);
                    let _ = other.join();
                    spent
                });
                let _ = coordinator.join();
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
