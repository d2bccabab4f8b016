//! `pbflags-load`: a closed-loop load generator for an evaluator on loopback. Runs `--concurrency`
//! callers for `--duration` over gRPC (HTTP/2, several connections) or Connect (binary proto over
//! HTTP/1.1 keep-alive connections), and prints throughput, latency percentiles and its own CPU
//! use, marked GENERATOR-BOUND when it used 90% or more of the cores it may run on (the rate is
//! then the tool's limit; `scripts/bench.sh` measures the server with h2load instead).
//!
//! `pbflags-load --url http://127.0.0.1:9201 --protocol grpc --rpc evaluate --duration 10s`; an
//! `https://` URL is called over TLS, checked against `--cacert`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt as _, Full};
use pbflags_evaluator::sources::upstream::{self, UpstreamCa};
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use pbflags_proto::v1::{BulkEvaluateRequest, EvaluateRequest, FlagValue};
use prost::Message as _;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Protocol {
    Grpc,
    Connect,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rpc {
    /// Evaluate of one flag.
    Evaluate,
    /// BulkEvaluate of `--bulk` flags.
    Bulk,
}

/// Load generator for pbflags evaluators.
#[derive(Parser, Debug)]
struct Args {
    /// Base URL of the evaluator.
    #[arg(long, default_value = "http://127.0.0.1:9201")]
    url: String,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    #[arg(long, value_enum, default_value = "evaluate")]
    rpc: Rpc,
    /// Flag ids to cycle through (Evaluate) or to send together (BulkEvaluate, repeated up to --bulk).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "notifications/1,notifications/2,notifications/3,notifications/4"
    )]
    flags: Vec<String>,
    /// Ids per BulkEvaluate.
    #[arg(long, default_value_t = 100)]
    bulk: usize,
    /// Entity id sent with every request.
    #[arg(long, default_value = "")]
    entity: String,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections (gRPC channels or HTTP/1.1 clients) shared by the callers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// PEM CA bundle for an `https://` URL [default: the system trust store].
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// How long to measure (after a 1 s warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime_like)]
    duration: Duration,
    /// Stop after this many requests in all (no warm-up; the duration is then a limit).
    #[arg(long)]
    requests: Option<u64>,
    /// Give every request its own entity id of exactly this many bytes (a memory test).
    #[arg(long)]
    unique_entity_bytes: Option<usize>,
    /// Give every request its own (undeclared) flag id of exactly this many bytes (a memory test).
    #[arg(long)]
    unique_flag_bytes: Option<usize>,
    /// Requests per second in all, paced per caller (default: as fast as answers come).
    #[arg(long)]
    rate: Option<f64>,
    /// Check answers (gRPC Evaluate): every value for a flag must equal the first one received for
    /// it; a different one counts as wrong. For fault runs whose state does not change.
    #[arg(long)]
    check_stable: bool,
    /// Write every measured request as `unix_ms,latency_us,ok,right` lines to this file.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
}

/// The first answer per flag id, which later answers must match (`--check-stable`).
#[derive(Default)]
struct FirstAnswers(std::sync::Mutex<std::collections::HashMap<String, Option<FlagValue>>>);

impl FirstAnswers {
    /// Whether `value` matches the first answer for `flag` (which it becomes if there is none).
    fn matches(&self, flag: &str, value: Option<FlagValue>) -> bool {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get(flag) {
            Some(first) => *first == value,
            None => {
                println!("first answer: {flag} = {value:?}");
                m.insert(flag.to_owned(), value);
                true
            }
        }
    }
}

/// A unique id of exactly `len` bytes (at least the digits of `seq`).
fn unique_id(prefix: &str, seq: u64, len: usize) -> String {
    let mut id = format!("{prefix}{seq}-");
    while id.len() < len {
        id.push('x');
    }
    id
}

fn humantime_like(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s:?}: use s or ms")),
    }
}

enum Caller {
    Grpc(FlagEvaluatorServiceClient<tonic::transport::Channel>),
    Connect(hyper_util::client::legacy::Client<upstream::Connector, Full<Bytes>>),
}

/// One call; `Ok(false)` is an answer that failed `--check-stable`.
async fn call(
    caller: &mut Caller,
    args: &Args,
    i: usize,
    seq: u64,
    first: &FirstAnswers,
) -> anyhow::Result<bool> {
    let flag = &match args.unique_flag_bytes {
        Some(n) => unique_id("f", seq, n),
        None => args.flags[i % args.flags.len()].clone(),
    };
    let entity = &match args.unique_entity_bytes {
        Some(n) => unique_id("e", seq, n),
        None => args.entity.clone(),
    };
    let ids: Vec<String> = args.flags.iter().cycle().take(args.bulk).cloned().collect();
    match (caller, args.rpc) {
        (Caller::Grpc(c), Rpc::Evaluate) => {
            let resp = c
                .evaluate(EvaluateRequest {
                    flag_id: flag.clone(),
                    entity_id: entity.clone(),
                })
                .await?
                .into_inner();
            if args.check_stable {
                return Ok(first.matches(flag, resp.value));
            }
        }
        (Caller::Grpc(c), Rpc::Bulk) => {
            c.bulk_evaluate(BulkEvaluateRequest {
                flag_ids: ids,
                entity_id: entity.clone(),
            })
            .await?;
        }
        (Caller::Connect(c), rpc) => {
            let (method, body) = match rpc {
                Rpc::Evaluate => (
                    "Evaluate",
                    EvaluateRequest {
                        flag_id: flag.clone(),
                        entity_id: entity.clone(),
                    }
                    .encode_to_vec(),
                ),
                Rpc::Bulk => (
                    "BulkEvaluate",
                    BulkEvaluateRequest {
                        flag_ids: ids,
                        entity_id: entity.clone(),
                    }
                    .encode_to_vec(),
                ),
            };
            let req = http::Request::post(format!(
                "{}/pbflags.v1.FlagEvaluatorService/{method}",
                args.url
            ))
            .header("content-type", "application/proto")
            .body(Full::new(Bytes::from(body)))?;
            let resp = c.request(req).await?;
            anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
            resp.into_body().collect().await?;
        }
    }
    Ok(true)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// This process's CPU time (user and system, all threads) in seconds, from `/proc/self/stat`;
/// `None` where there is no such file.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    // In clock ticks of USER_HZ, which Linux fixes at 100 for /proc on every architecture it
    // supports.
    Some((ticks(14)? + ticks(15)?) / 100.0)
}

/// The load tool's own share of the CPUs it may run on over a measurement, and whether that makes
/// it the bottleneck (90% or more): then the rate measured is the tool's limit, not the server's.
fn own_cpu(cpu: Option<f64>, elapsed: f64) -> String {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    match cpu {
        Some(seconds) => {
            let share = seconds / elapsed / cores as f64;
            format!(
                ", load tool CPU {:.0}% of {cores} core(s){}",
                100.0 * share,
                if share >= 0.9 {
                    " GENERATOR-BOUND: the rate is this tool's limit, not the server's"
                } else {
                    ""
                }
            )
        }
        None => String::new(),
    }
}

fn main() -> anyhow::Result<()> {
    // As the evaluator does: on one CPU (pinned with taskset), the current-thread scheduler, which
    // costs about half as much per request as one worker thread plus the thread driving it.
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    let runtime = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(
        !args.check_stable || matches!((args.protocol, args.rpc), (Protocol::Grpc, Rpc::Evaluate)),
        "--check-stable checks gRPC Evaluate answers only"
    );
    let first = Arc::new(FirstAnswers::default());
    let epoch = Instant::now();
    let epoch_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let ca = args.url.starts_with("https://").then(|| {
        args.cacert
            .clone()
            .map_or(UpstreamCa::System, UpstreamCa::File)
    });
    let connector = |http2| {
        upstream::https_connector(ca.as_ref(), Duration::from_secs(5), http2)
            .map_err(anyhow::Error::msg)
    };
    let mut callers: Vec<Caller> = Vec::new();
    for _ in 0..args.connections.max(1) {
        callers.push(match args.protocol {
            Protocol::Grpc => {
                let ch = tonic::transport::Endpoint::from_shared(args.url.clone())?
                    .connect_with_connector(connector(true)?)
                    .await?;
                Caller::Grpc(FlagEvaluatorServiceClient::new(ch))
            }
            Protocol::Connect => Caller::Connect(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(args.concurrency)
                    .build(connector(false)?),
            ),
        });
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let mut caller = match &callers[t % callers.len()] {
            Caller::Grpc(c) => Caller::Grpc(c.clone()),
            Caller::Connect(c) => Caller::Connect(c.clone()),
        };
        let (args, measuring, stop, first) =
            (args.clone(), measuring.clone(), stop.clone(), first.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
            let mut records: Vec<(u128, u64, bool, bool)> = Vec::new();
            let mut errors = 0u64;
            let mut wrong = 0u64;
            let mut sent = 0u64;
            // Paced callers start spread over one period so the load is even.
            let period = args
                .rate
                .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r.max(0.001)));
            let mut next = Instant::now()
                + period.map_or(Duration::ZERO, |p| {
                    p.mul_f64(t as f64 / args.concurrency as f64)
                });
            let mut i = t;
            let quota = args.requests.map(|n| {
                n / args.concurrency as u64 + u64::from((t as u64) < n % args.concurrency as u64)
            });
            while !stop.load(Ordering::Relaxed) && quota.is_none_or(|q| sent < q) {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let start = Instant::now();
                // Unique across callers: caller t sends t, t + concurrency, t + 2 × concurrency, …
                let seq = sent * args.concurrency as u64 + t as u64;
                let result = call(&mut caller, &args, i, seq, &first).await;
                let latency = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                sent += 1;
                if measuring.load(Ordering::Relaxed) {
                    let (ok, right) = match result {
                        Ok(right) => (true, right),
                        Err(_) => (false, true),
                    };
                    if ok {
                        latencies.push(latency);
                    } else {
                        errors += 1;
                    }
                    wrong += u64::from(!right);
                    if args.record.is_some() {
                        let at = epoch_unix_ms + (start - epoch).as_millis();
                        records.push((at, latency, ok, right));
                    }
                }
                i += 1;
            }
            (latencies, errors, sent, wrong, records)
        }));
    }
    let started;
    let cpu_at_start;
    if args.requests.is_some() {
        // A fixed number of requests: measure them all, the duration is only a limit.
        measuring.store(true, Ordering::Relaxed);
        started = Instant::now();
        cpu_at_start = cpu_seconds();
        let all_done = async {
            while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(args.duration, all_done).await;
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        measuring.store(true, Ordering::Relaxed);
        started = Instant::now();
        cpu_at_start = cpu_seconds();
        tokio::time::sleep(args.duration).await;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu_at_start)
        .map(|(end, start)| end - start);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut records = Vec::new();
    let (mut errors, mut sent, mut wrong) = (0, 0, 0);
    for t in tasks {
        let (l, e, n, w, r) = t.await?;
        all.extend(l);
        records.extend(r);
        errors += e;
        sent += n;
        wrong += w;
    }
    if let Some(path) = &args.record {
        records.sort_unstable();
        let mut out = String::with_capacity(records.len() * 24);
        for (at, latency, ok, right) in records {
            out.push_str(&format!(
                "{at},{latency},{},{}\n",
                u8::from(ok),
                u8::from(right)
            ));
        }
        std::fs::write(path, out)?;
    }
    all.sort_unstable();
    println!(
        "{:?} {:?}{}: {:.0} req/s over {:.1}s, concurrency {}, p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, errors {}, sent {} (warm-up included){}{}",
        args.protocol,
        args.rpc,
        if matches!(args.rpc, Rpc::Bulk) {
            format!("({})", args.bulk)
        } else {
            String::new()
        },
        all.len() as f64 / elapsed,
        elapsed,
        args.concurrency,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        errors,
        sent,
        if args.check_stable {
            format!(", wrong {wrong}")
        } else {
            String::new()
        },
        own_cpu(cpu, elapsed)
    );
    Ok(())
}
