//! TLS through the system's libssl, loaded with dlopen as Python's `_ssl`
//! loads it (no build-time OpenSSL): a client and a server connected over
//! loopback TCP in one thread, for the SSL_write_ex/SSL_read_ex benchmark.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_void},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

type Ssl = *mut c_void;

/// The libssl functions used, looked up once.
struct LibSsl {
    ctx_new: unsafe extern "C" fn(*const c_void) -> *mut c_void,
    client_method: unsafe extern "C" fn() -> *const c_void,
    server_method: unsafe extern "C" fn() -> *const c_void,
    use_chain: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    use_key: unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int,
    new: unsafe extern "C" fn(*mut c_void) -> Ssl,
    set_fd: unsafe extern "C" fn(Ssl, c_int) -> c_int,
    connect: unsafe extern "C" fn(Ssl) -> c_int,
    accept: unsafe extern "C" fn(Ssl) -> c_int,
    get_error: unsafe extern "C" fn(Ssl, c_int) -> c_int,
    write_ex: unsafe extern "C" fn(Ssl, *const c_void, usize, *mut usize) -> c_int,
    read_ex: unsafe extern "C" fn(Ssl, *mut c_void, usize, *mut usize) -> c_int,
}

const SSL_FILETYPE_PEM: c_int = 1;
const SSL_ERROR_WANT_READ: c_int = 2;
const SSL_ERROR_WANT_WRITE: c_int = 3;

fn symbol<T>(lib: *mut c_void, name: &CStr) -> T {
    // SAFETY: dlsym on a handle dlopen returned, with a NUL-terminated name.
    let address = unsafe { libc::dlsym(lib, name.as_ptr()) };
    assert!(!address.is_null(), "libssl has no {name:?}");
    assert_eq!(size_of::<T>(), size_of::<*mut c_void>());
    // SAFETY: T is the function pointer type of this OpenSSL 3 symbol's
    // documented signature, and has the size of a pointer (checked above).
    unsafe { std::mem::transmute_copy(&address) }
}

impl LibSsl {
    fn load() -> LibSsl {
        // SAFETY: dlopen with a NUL-terminated name; the library is never closed.
        let lib = unsafe { libc::dlopen(c"libssl.so.3".as_ptr(), libc::RTLD_NOW) };
        assert!(!lib.is_null(), "cannot dlopen libssl.so.3");
        LibSsl {
            ctx_new: symbol(lib, c"SSL_CTX_new"),
            client_method: symbol(lib, c"TLS_client_method"),
            server_method: symbol(lib, c"TLS_server_method"),
            use_chain: symbol(lib, c"SSL_CTX_use_certificate_chain_file"),
            use_key: symbol(lib, c"SSL_CTX_use_PrivateKey_file"),
            new: symbol(lib, c"SSL_new"),
            set_fd: symbol(lib, c"SSL_set_fd"),
            connect: symbol(lib, c"SSL_connect"),
            accept: symbol(lib, c"SSL_accept"),
            get_error: symbol(lib, c"SSL_get_error"),
            write_ex: symbol(lib, c"SSL_write_ex"),
            read_ex: symbol(lib, c"SSL_read_ex"),
        }
    }
}

/// Two ends of one TLS connection, both driven from this thread.
pub struct TlsPair {
    lib: LibSsl,
    client: Ssl,
    server: Ssl,
    // The sockets live as long as the SSL objects that use their fds.
    _sockets: (TcpStream, TcpStream),
}

/// Maps libssl and does nothing else: a process whose uprobes exist while
/// another process, unwatched, is measured.
pub fn idle() {
    let _ = LibSsl::load();
}

impl TlsPair {
    /// A handshake between a client and a server with `cert`/`key`, over
    /// non-blocking loopback sockets stepped in turn.
    pub fn new(cert: &str, key: &str) -> TlsPair {
        let lib = LibSsl::load();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client_sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_sock, _) = listener.accept().unwrap();
        let (cert, key) = (CString::new(cert).unwrap(), CString::new(key).unwrap());
        // SAFETY: the OpenSSL 3 API as documented: contexts and SSL objects
        // are created from valid methods, files are NUL-terminated paths,
        // and the fds outlive the SSL objects (kept in `_sockets`).
        let (client, server) = unsafe {
            let server_ctx = (lib.ctx_new)((lib.server_method)());
            assert_eq!(
                (lib.use_chain)(server_ctx, cert.as_ptr()),
                1,
                "server certificate"
            );
            assert_eq!(
                (lib.use_key)(server_ctx, key.as_ptr(), SSL_FILETYPE_PEM),
                1,
                "server key"
            );
            let client_ctx = (lib.ctx_new)((lib.client_method)());
            let client = (lib.new)(client_ctx);
            let server = (lib.new)(server_ctx);
            (lib.set_fd)(client, client_sock.as_raw_fd());
            (lib.set_fd)(server, server_sock.as_raw_fd());
            (client, server)
        };
        client_sock.set_nonblocking(true).unwrap();
        server_sock.set_nonblocking(true).unwrap();
        let (mut client_done, mut server_done) = (false, false);
        for _ in 0..10_000 {
            // SAFETY: valid SSL objects from above.
            unsafe {
                if !client_done {
                    client_done = step(&lib, client, (lib.connect)(client));
                }
                if !server_done {
                    server_done = step(&lib, server, (lib.accept)(server));
                }
            }
            if client_done && server_done {
                return TlsPair {
                    lib,
                    client,
                    server,
                    _sockets: (client_sock, server_sock),
                };
            }
        }
        panic!("TLS handshake did not finish");
    }

    /// One exchange: the client writes `request`, the server reads it and
    /// writes `response`, the client reads it. Four SSL calls.
    pub fn round(&mut self, request: &[u8], response: &[u8]) {
        let mut buffer = [0u8; 4096];
        self.write(self.client, request);
        self.read(self.server, &mut buffer, request.len());
        self.write(self.server, response);
        self.read(self.client, &mut buffer, response.len());
    }

    fn write(&self, ssl: Ssl, data: &[u8]) {
        let mut written = 0usize;
        // SAFETY: a valid SSL object; `data` is live for the call.
        let ok = unsafe { (self.lib.write_ex)(ssl, data.as_ptr().cast(), data.len(), &mut written) };
        assert!(ok == 1 && written == data.len(), "SSL_write_ex failed");
    }

    /// Reads exactly `want` bytes (the peer wrote them already: loopback
    /// delivers before write returns, so this only loops on a split record).
    fn read(&self, ssl: Ssl, buffer: &mut [u8], want: usize) {
        let mut got = 0;
        while got < want {
            let mut read = 0usize;
            // SAFETY: a valid SSL object; the slice bounds the write.
            let ok = unsafe {
                (self.lib.read_ex)(
                    ssl,
                    buffer[got..].as_mut_ptr().cast(),
                    buffer.len() - got,
                    &mut read,
                )
            };
            if ok == 1 {
                got += read;
            } else {
                // SAFETY: a valid SSL object and the return value just given.
                let error = unsafe { (self.lib.get_error)(ssl, 0) };
                assert_eq!(error, SSL_ERROR_WANT_READ, "SSL_read_ex failed");
            }
        }
    }
}

/// One handshake step's result: done, or wants I/O (try again), else fail.
///
/// # Safety
/// `ssl` is a valid SSL object.
unsafe fn step(lib: &LibSsl, ssl: Ssl, ret: c_int) -> bool {
    if ret == 1 {
        return true;
    }
    // SAFETY: per the function's contract.
    let error = unsafe { (lib.get_error)(ssl, ret) };
    assert!(
        error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE,
        "TLS handshake failed (SSL error {error})"
    );
    false
}
