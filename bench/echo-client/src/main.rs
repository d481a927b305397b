//! A fixed echo client for ferroloop's network benchmarks.
//!
//! `echo-client ADDR --conns N --size BYTES --seconds S [--warmup W] [--tls]` opens N
//! connections to ADDR (`tcp:HOST:PORT` or `unix:PATH`), and on each, in its own thread, sends a
//! SIZE-byte message and reads the whole echo back, over and over. After the warm-up it prints
//! `START` and counts round trips for S seconds, then prints one JSON line with the totals.
//!
//! The buffers are page-aligned: on the machines this runs on an unaligned receive buffer
//! doubled the kernel's copy cost and made the client, not the server, the bottleneck.
//!
//! Without `--tls` the client uses std only. With `--tls` each connection (TCP or Unix) is
//! wrapped in a blocking TLS 1.3 client session from `rustls` (pure Rust, `ring` provider), the
//! one dependency: std has no TLS, and a blocking rustls stream keeps a round trip the same
//! write, flush, read-exact as on a plain socket. The handshake is done while the connection is
//! opened, before the threads start together, so it is never inside the measured window. The
//! server's certificate is not checked (see [`AcceptAnyServerCert`]).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
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

/// Accepts any server certificate, for `--tls` only.
///
/// This is a load generator talking to a local benchmark server with a self-signed test
/// certificate, never a real client: it must not be used to talk to anything that matters. The
/// handshake signature is still verified (with the crypto provider's own algorithms), so the
/// handshake costs the server what a real one does.
#[derive(Debug)]
struct AcceptAnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The client configuration for `--tls`: TLS 1.3 only, `ring`, any server certificate.
fn tls_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = AcceptAnyServerCert(provider.signature_verification_algorithms);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // Every connection does a full handshake: with resumption on, whether a connection resumes
    // would depend on whether another one had received a ticket before it connected.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

type Tls<S> = Box<StreamOwned<ClientConnection, S>>;

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Tls<TcpStream>),
    TlsUnix(Tls<UnixStream>),
}

/// Wraps `sock` in a TLS client session and completes the handshake.
fn handshake<S: Read + Write>(sock: S, config: &Arc<ClientConfig>) -> io::Result<Tls<S>> {
    let name = ServerName::try_from("localhost").expect("valid server name");
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = Box::new(StreamOwned::new(conn, sock));
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// One round trip; `flush` is a no-op on a plain socket and sends the last record under TLS.
fn echo<S: Read + Write>(s: &mut S, out: &[u8], back: &mut [u8]) -> io::Result<()> {
    s.write_all(out)?;
    s.flush()?;
    s.read_exact(back)
}

impl Conn {
    fn open(addr: &str, tls: Option<&Arc<ClientConfig>>) -> io::Result<Conn> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let stream = UnixStream::connect(path)?;
            return match tls {
                Some(config) => handshake(stream, config).map(Conn::TlsUnix),
                None => Ok(Conn::Unix(stream)),
            };
        }
        let host = addr.strip_prefix("tcp:").unwrap_or(addr);
        let stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        match tls {
            Some(config) => handshake(stream, config).map(Conn::TlsTcp),
            None => Ok(Conn::Tcp(stream)),
        }
    }

    fn round_trip(&mut self, out: &[u8], back: &mut [u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => echo(s, out, back),
            Conn::Unix(s) => echo(s, out, back),
            Conn::TlsTcp(s) => echo(s.as_mut(), out, back),
            Conn::TlsUnix(s) => echo(s.as_mut(), out, back),
        }
    }
}

struct Args {
    addr: String,
    conns: usize,
    size: usize,
    seconds: f64,
    warmup: f64,
    tls: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: echo-client ADDR --conns N --size BYTES --seconds S [--warmup W] [--tls]")?;
    let mut parsed = Args {
        addr,
        conns: 10,
        size: 1024,
        seconds: 3.0,
        warmup: 0.5,
        tls: false,
    };
    while let Some(flag) = args.next() {
        // The one flag without a value.
        if flag == "--tls" {
            parsed.tls = true;
            continue;
        }
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
    let tls = match args.tls.then(tls_config).transpose() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("echo-client: TLS configuration: {e}");
            std::process::exit(1);
        }
    };
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(args.conns + 1));
    let mut threads = Vec::new();
    for i in 0..args.conns {
        let (counting, stop, total, ready) = (counting.clone(), stop.clone(), total.clone(), ready.clone());
        let (addr, size, tls) = (args.addr.clone(), args.size, tls.clone());
        threads.push(std::thread::spawn(move || -> io::Result<()> {
            let conn = Conn::open(&addr, tls.as_ref());
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
