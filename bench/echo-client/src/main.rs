//! A fixed echo client for ferroloop's network benchmarks.
//!
//! `echo-client ADDR --conns N --size BYTES --seconds S [--warmup W]` opens N connections to
//! ADDR (`tcp:HOST:PORT` or `unix:PATH`), and on each, in its own thread, sends a SIZE-byte
//! message and reads the whole echo back, over and over. After the warm-up it prints `START` and
//! counts round trips for S seconds, then prints one JSON line with the totals.
//!
//! The buffers are page-aligned: on the machines this runs on an unaligned receive buffer
//! doubled the kernel's copy cost and made the client, not the server, the bottleneck.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct PageBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl PageBuf {
    fn new(len: usize) -> PageBuf {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        PageBuf { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(addr: &str) -> io::Result<Conn> {
        if let Some(path) = addr.strip_prefix("unix:") {
            return UnixStream::connect(path).map(Conn::Unix);
        }
        let host = addr.strip_prefix("tcp:").unwrap_or(addr);
        let stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        Ok(Conn::Tcp(stream))
    }

    fn round_trip(&mut self, out: &[u8], back: &mut [u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(out)?;
                s.read_exact(back)
            }
            Conn::Unix(s) => {
                s.write_all(out)?;
                s.read_exact(back)
            }
        }
    }
}

struct Args {
    addr: String,
    conns: usize,
    size: usize,
    seconds: f64,
    warmup: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: echo-client ADDR --conns N --size BYTES --seconds S [--warmup W]")?;
    let mut parsed = Args {
        addr,
        conns: 10,
        size: 1024,
        seconds: 3.0,
        warmup: 0.5,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--conns" => parsed.conns = value.parse().map_err(|e| bad(&e))?,
            "--size" => parsed.size = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => parsed.seconds = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => parsed.warmup = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(parsed)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(args.conns + 1));
    let mut threads = Vec::new();
    for i in 0..args.conns {
        let (counting, stop, total, ready) = (counting.clone(), stop.clone(), total.clone(), ready.clone());
        let (addr, size) = (args.addr.clone(), args.size);
        threads.push(std::thread::spawn(move || -> io::Result<()> {
            let conn = Conn::open(&addr);
            ready.wait();
            let mut conn = conn?;
            let mut out = PageBuf::new(size);
            let mut back = PageBuf::new(size);
            for (j, b) in out.as_mut().iter_mut().enumerate() {
                *b = (i + j) as u8;
            }
            let mut mine = 0u64;
            while !stop.load(Ordering::Relaxed) {
                conn.round_trip(out.as_mut(), back.as_mut())?;
                if back.as_mut()[size - 1] != out.as_mut()[size - 1] {
                    return Err(io::Error::other("echo does not match"));
                }
                if counting.load(Ordering::Relaxed) {
                    mine += 1;
                }
            }
            total.fetch_add(mine, Ordering::Relaxed);
            Ok(())
        }));
    }
    ready.wait();
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    println!("START");
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    counting.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    println!("STOP");
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e.to_string()),
            Err(_) => failed = Some("client thread panicked".into()),
        }
    }
    if let Some(e) = failed {
        eprintln!("echo-client: {e}");
        std::process::exit(1);
    }
    let messages = total.load(Ordering::Relaxed);
    println!(
        "{{\"messages\": {messages}, \"seconds\": {seconds:.6}, \"bytes\": {}}}",
        messages * args.size as u64 * 2
    );
}
