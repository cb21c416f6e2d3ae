//! The C ABI of Envoy 1.40's dynamic modules (`source/extensions/dynamic_modules/abi/abi.h`,
//! ABI "v0.2.0"), written by hand: the types, the callbacks Envoy exports, the hooks this module
//! exports, and safe handles over Envoy's pointers. This is the only module with `unsafe` code.
//!
//! Every hook catches panics: a panic must never unwind into Envoy (it would abort the proxy),
//! and a request whose check panicked is answered 503, never let through.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::filter::Filter;
use crate::module::{FilterConfig, RouteSettings};

/// The ABI version this module is written against, as Envoy 1.40 reports it.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_{module,envoy}_buffer`: a pointer and a length, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const c_char,
    len: usize,
}

impl Buffer {
    const NULL: Buffer = Buffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    fn envoy(ptr: *const c_char, len: usize) -> Self {
        Buffer { ptr, len }
    }

    fn of(bytes: &[u8]) -> Self {
        Buffer {
            ptr: bytes.as_ptr().cast(),
            len: bytes.len(),
        }
    }

    /// The bytes of an Envoy-owned buffer.
    ///
    /// # Safety
    /// `ptr` must be null or point to `len` readable bytes that stay valid for `'a`.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: non-null and `len` readable bytes, as the caller promises.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

/// `envoy_dynamic_module_type_{module,envoy}_http_header` and `..._module_key_value_pair`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pair {
    key_ptr: *const c_char,
    key_len: usize,
    value_ptr: *const c_char,
    value_len: usize,
}

impl Pair {
    fn of(key: &[u8], value: &[u8]) -> Self {
        Pair {
            key_ptr: key.as_ptr().cast(),
            key_len: key.len(),
            value_ptr: value.as_ptr().cast(),
            value_len: value.len(),
        }
    }

    /// Pairs pointing into `entries` (valid while they are).
    fn all(entries: &[(&str, &str)]) -> Vec<Self> {
        entries
            .iter()
            .map(|(k, v)| Self::of(k.as_bytes(), v.as_bytes()))
            .collect()
    }
}

impl Pair {
    const EMPTY: Pair = Pair {
        key_ptr: std::ptr::null(),
        key_len: 0,
        value_ptr: std::ptr::null(),
        value_len: 0,
    };
}

const REQUEST_HEADERS: i32 = 0;
const RESPONSE_HEADERS: i32 = 2;
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;
/// Body hook status: hold this data; Envoy buffers it and, past its buffer limit, stops reading
/// from the client (flow control) instead of answering 413, so a large upload waiting for a key
/// refetch still passes whole once allowed.
const STOP_ITERATION_AND_WATERMARK: u32 = 2;
const CALLOUT_SUCCESS: i32 = 0;

/// First field of every per-route configuration this module makes ("certbnd\0" read as a
/// little-endian u64): Envoy hands back whatever pointer the route's most specific dynamic-module
/// configuration holds, so the tag is checked before the pointer is trusted.
const ROUTE_TAG: u64 = u64::from_le_bytes(*b"certbnd\0");

#[repr(C)]
struct TaggedRoute {
    tag: u64,
    settings: RouteSettings,
}

/// The route's per-route configuration was not made by this module.
#[derive(Debug)]
pub struct ForeignRouteConfig;

// Everything Envoy's workers share must be safe to share: checked at compile time.
const _: fn() = || {
    fn shared_across_workers<T: Send + Sync>() {}
    shared_across_workers::<FilterConfig>();
    shared_across_workers::<RouteSettings>();
    shared_across_workers::<TaggedRoute>();
};

/// Envoy's log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Attribute ids (`envoy_dynamic_module_type_attribute_id`) this module reads.
pub const ATTRIBUTE_PEER_CERTIFICATE_SHA256: i32 = 38;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: i32, message: Buffer);
    fn envoy_dynamic_module_callback_log_enabled(level: i32) -> bool;
    fn envoy_dynamic_module_callback_is_validation_mode() -> bool;
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: i32,
        key: Buffer,
        result: *mut Buffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: i32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: i32,
        result: *mut Pair,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: i32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut Pair,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_send_response_headers(
        filter: *mut c_void,
        headers: *mut Pair,
        headers_len: usize,
        end_stream: bool,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: i32,
        result: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        filter: *mut c_void,
        namespace: Buffer,
        entries: *const Pair,
        entries_len: usize,
    );
    fn envoy_dynamic_module_callback_get_most_specific_route_config(
        filter: *mut c_void,
    ) -> *const c_void;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buffer,
        labels: *mut Buffer,
        labels_len: usize,
        id: *mut usize,
    ) -> i32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        labels: *mut Buffer,
        labels_len: usize,
        value: u64,
    ) -> i32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        labels: *mut Buffer,
        labels_len: usize,
        value: u64,
    ) -> i32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        id: *mut u64,
        cluster: Buffer,
        headers: *mut Pair,
        headers_len: usize,
        body: Buffer,
        timeout_ms: u64,
    ) -> i32;
}

/// Writes a line to Envoy's log (component `dynamic_modules`).
pub fn log(level: Level, message: &str) {
    // SAFETY: the buffer points into `message`, alive for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as i32, Buffer::of(message.as_bytes())) }
}

/// Whether Envoy would write a line at `level` (skip formatting otherwise).
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: no pointers; callable from any thread.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as i32) }
}

/// Envoy runs with `--mode validate`: check the configuration, start nothing.
pub fn is_validation_mode() -> bool {
    // SAFETY: no pointers; called on the main thread from the config hook.
    unsafe { envoy_dynamic_module_callback_is_validation_mode() }
}

/// Envoy's filter configuration object: alive from the config hook until `config_destroy`.
/// Used on the main thread (callouts, schedulers) and for counters.
#[derive(Clone, Copy)]
pub struct ConfigHandle(*mut c_void);

// SAFETY: the pointer is only dereferenced by Envoy, in callbacks documented as callable from
// the main thread (callouts, scheduler creation) or any thread (counters), while the config lives.
unsafe impl Send for ConfigHandle {}
// SAFETY: as above; the handle itself is an immutable address.
unsafe impl Sync for ConfigHandle {}

/// Why an HTTP callout could not start (`envoy_dynamic_module_type_http_callout_init_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalloutRefused(pub i32);

impl std::fmt::Display for CalloutRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            1 => "missing required headers",
            2 => "cluster not found",
            3 => "duplicate callout id",
            4 => "cannot create the request (no healthy host?)",
            _ => "refused",
        })
    }
}

impl ConfigHandle {
    /// Defines a counter with these label names; `None` if Envoy refuses.
    pub fn define_counter(self, name: &str, labels: &[&str]) -> Option<usize> {
        let mut labels: Vec<Buffer> = labels.iter().map(|l| Buffer::of(l.as_bytes())).collect();
        let mut id = 0usize;
        // SAFETY: the name and label buffers point into live strings for the call; `id` is a
        // valid out-pointer; called on the main thread from the config hook.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                Buffer::of(name.as_bytes()),
                labels.as_mut_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == 0).then_some(id)
    }

    /// Adds `value` to a counter this configuration defined (label values in definition order).
    pub fn add_to_counter(self, id: usize, labels: &[&str], value: u64) {
        let mut labels: Vec<Buffer> = labels.iter().map(|l| Buffer::of(l.as_bytes())).collect();
        // SAFETY: the config is alive (called before config_destroy returns: from its hooks on
        // the main thread); the label buffers point into live strings for the call.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                labels.as_mut_ptr(),
                labels.len(),
                value,
            )
        };
    }

    /// A scheduler that runs `on_http_filter_config_scheduled` on the main thread.
    pub fn scheduler(self) -> Option<ConfigScheduler> {
        // SAFETY: called on the main thread while the config is alive.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(ConfigScheduler(ptr))
    }

    /// Starts a GET through `cluster` (main thread only); the answer arrives in
    /// `on_http_filter_config_http_callout_done` with the returned id.
    pub fn get(
        self,
        cluster: &str,
        authority: &str,
        path: &str,
        timeout_ms: u64,
    ) -> Result<u64, CalloutRefused> {
        let mut headers = [
            Pair::of(b":method", b"GET"),
            Pair::of(b":path", path.as_bytes()),
            Pair::of(b"host", authority.as_bytes()),
            Pair::of(b"accept", b"application/json"),
            Pair::of(b"user-agent", b"certbound-envoy"),
        ];
        let mut id = 0u64;
        // SAFETY: the header and cluster buffers point into values alive for the call (Envoy
        // copies them); `id` is a valid out-pointer; this runs on the main thread (config
        // scheduler or callout hooks) while the config is alive.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                Buffer::of(cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                Buffer::NULL,
                timeout_ms,
            )
        };
        if result == CALLOUT_SUCCESS {
            Ok(id)
        } else {
            Err(CalloutRefused(result))
        }
    }
}

/// Runs events on the main thread; committed from any thread; deleted when dropped.
pub struct ConfigScheduler(*mut c_void);

// SAFETY: Envoy documents scheduler commits as callable from any thread; the pointer is owned by
// this value and deleted exactly once, in Drop.
unsafe impl Send for ConfigScheduler {}
// SAFETY: commit takes the pointer by value and Envoy synchronises it internally.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: the scheduler is alive until Drop; commit is thread-safe.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new and deleted only here, once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// Runs `on_http_filter_scheduled` on the worker that owns one stream. Owned by that stream's
/// filter and deleted when dropped; others commit through a [`StreamWaker`].
pub struct StreamScheduler(*mut c_void);

impl StreamScheduler {
    /// A handle that commits to this scheduler from any thread. The owner must make sure no
    /// waker is used after the scheduler is dropped (the waiter list's lock does).
    pub fn waker(&self) -> StreamWaker {
        StreamWaker(self.0)
    }
}

impl Drop for StreamScheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new for this stream and deleted only here, once.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// Commits an event to a stream's scheduler from any thread.
pub struct StreamWaker(*mut c_void);

// SAFETY: commits are thread-safe in Envoy; the waker is only used while its StreamScheduler
// lives, which the waiter list guarantees (the stream removes its waiter under the list's lock
// before dropping the scheduler).
unsafe impl Send for StreamWaker {}

impl StreamWaker {
    pub fn wake(&self, event: u64) {
        // SAFETY: see the Send impl: the scheduler is alive while a waker is reachable.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) }
    }
}

thread_local! {
    /// Room for a request's headers as Envoy lists them (one worker's, reused by its streams).
    static HEADER_ENTRIES: RefCell<Vec<Pair>> = const { RefCell::new(Vec::new()) };
}

/// A request's headers, read from Envoy in one call ([`Stream::with_request_headers`]). Names
/// and values point into Envoy's header map: valid while the hook runs and no header changes,
/// which the exclusive borrow of the stream for the reader's whole life guarantees.
pub struct RequestHeaders<'a> {
    entries: &'a [Pair],
}

impl<'a> RequestHeaders<'a> {
    /// Every value of `name` (ASCII case ignored, as Envoy's own lookup), in Envoy's order.
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.entries.iter().filter_map(move |entry| {
            // SAFETY: Envoy filled the entry with a name in its header map, valid for 'a (see
            // the type's documentation).
            let key = unsafe { Buffer::envoy(entry.key_ptr, entry.key_len).bytes() };
            // SAFETY: likewise for the value.
            let value = unsafe { Buffer::envoy(entry.value_ptr, entry.value_len).bytes() };
            key.eq_ignore_ascii_case(name.as_bytes()).then_some(value)
        })
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// Whether the request has a header `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.first(name).is_some()
    }
}

/// One HTTP stream, as seen from a hook on its worker thread. Not `Send`: Envoy's per-stream
/// pointer is only valid on that worker, during hooks.
pub struct Stream<'h> {
    ptr: *mut c_void,
    _hook: PhantomData<&'h mut ()>,
}

impl Stream<'_> {
    /// Runs `read` over the request's headers, fetched from Envoy in one call (instead of one
    /// call per header). The stream is borrowed exclusively meanwhile: no header can change
    /// while `read` holds pointers into them. No headers (Envoy has none to give) reads as empty.
    pub fn with_request_headers<R>(&mut self, read: impl FnOnce(&RequestHeaders<'_>) -> R) -> R {
        HEADER_ENTRIES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut entries) => self.read_request_headers(&mut entries, read),
            // Not expected (hooks do not nest); correct either way.
            Err(_) => self.read_request_headers(&mut Vec::new(), read),
        })
    }

    fn read_request_headers<R>(
        &mut self,
        entries: &mut Vec<Pair>,
        read: impl FnOnce(&RequestHeaders<'_>) -> R,
    ) -> R {
        // SAFETY: hook-time stream pointer.
        let count = unsafe {
            envoy_dynamic_module_callback_http_get_headers_size(self.ptr, REQUEST_HEADERS)
        };
        entries.clear();
        entries.resize(count, Pair::EMPTY);
        // SAFETY: hook-time stream pointer; `entries` has room for the `count` headers Envoy
        // writes (the same map, unchanged since it was counted).
        let filled = count > 0
            && unsafe {
                envoy_dynamic_module_callback_http_get_headers(
                    self.ptr,
                    REQUEST_HEADERS,
                    entries.as_mut_ptr(),
                )
            };
        let entries: &[Pair] = if filled { entries } else { &[] };
        read(&RequestHeaders { entries })
    }

    /// Every value of a request header (repeated headers stay separate). Bytes that are not
    /// UTF-8 are replaced (a token or certificate with them is invalid anyway).
    pub fn request_header(&self, name: &str) -> Vec<String> {
        let mut first = Buffer::NULL;
        let mut count = 0usize;
        // SAFETY: hook-time stream pointer; key buffer alive for the call; out-pointers valid.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                REQUEST_HEADERS,
                Buffer::of(name.as_bytes()),
                &mut first,
                0,
                &mut count,
            )
        };
        if !found || count == 0 {
            return Vec::new();
        }
        // SAFETY: Envoy filled `first` with a buffer valid until this hook returns or the headers
        // change; it is copied at once.
        let mut values = vec![String::from_utf8_lossy(unsafe { first.bytes() }).into_owned()];
        for index in 1..count {
            let mut value = Buffer::NULL;
            // SAFETY: as above, for value `index` of `count`.
            let ok = unsafe {
                envoy_dynamic_module_callback_http_get_header(
                    self.ptr,
                    REQUEST_HEADERS,
                    Buffer::of(name.as_bytes()),
                    &mut value,
                    index,
                    std::ptr::null_mut(),
                )
            };
            if ok {
                // SAFETY: filled by Envoy just above, copied at once.
                values.push(String::from_utf8_lossy(unsafe { value.bytes() }).into_owned());
            }
        }
        values
    }

    /// Writes a string attribute of the stream over `text` (keeping its allocation); `false`
    /// (and `text` empty) when Envoy has none (e.g. no TLS).
    pub fn attribute_into(&self, id: i32, text: &mut String) -> bool {
        let mut value = Buffer::NULL;
        text.clear();
        // SAFETY: hook-time stream pointer; valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.ptr, id, &mut value)
        };
        if ok {
            // SAFETY: filled by Envoy, valid during the hook, copied at once.
            let bytes = unsafe { value.bytes() };
            match std::str::from_utf8(bytes) {
                Ok(value) => text.push_str(value),
                Err(_) => text.push_str(&String::from_utf8_lossy(bytes)),
            }
        }
        ok
    }

    /// The matched route's certbound per-route configuration, if it has one; `Err` when the
    /// route carries a per-route configuration this module did not make (its tag is not ours).
    pub fn route_settings(&self) -> Result<Option<&RouteSettings>, ForeignRouteConfig> {
        // SAFETY: hook-time stream pointer.
        let ptr = unsafe { envoy_dynamic_module_callback_get_most_specific_route_config(self.ptr) };
        if ptr.is_null() {
            return Ok(None);
        }
        // SAFETY: a non-null pointer is a per-route configuration made by a dynamic module's
        // per_route_config_new, alive while the route configuration is (which outlives the
        // stream's hooks). Ours start with ROUTE_TAG; only the tag is read before it is checked.
        let tag = unsafe { ptr.cast::<u64>().read_unaligned() };
        if tag != ROUTE_TAG {
            return Err(ForeignRouteConfig);
        }
        // SAFETY: the tag says it is a TaggedRoute this module leaked in per_route_config_new.
        Ok(Some(unsafe { &(*ptr.cast::<TaggedRoute>()).settings }))
    }

    /// Sets (replaces) a request header for the upstream.
    pub fn set_request_header(&self, name: &str, value: &str) {
        self.set_header(REQUEST_HEADERS, name, Buffer::of(value.as_bytes()));
    }

    /// Sets (replaces) a header of the response to the client (the response headers hook).
    pub fn set_response_header(&self, name: &str, value: &str) {
        self.set_header(RESPONSE_HEADERS, name, Buffer::of(value.as_bytes()));
    }

    /// Removes a request header (a null value removes it).
    pub fn remove_request_header(&self, name: &str) {
        self.set_header(REQUEST_HEADERS, name, Buffer::NULL);
    }

    fn set_header(&self, kind: i32, name: &str, value: Buffer) {
        // SAFETY: hook-time stream pointer; the buffers point into `name` and the caller's value,
        // alive for the call (Envoy copies them).
        let _ = unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                kind,
                Buffer::of(name.as_bytes()),
                value,
            )
        };
    }

    /// Answers the client now instead of the upstream (the hook then returns StopIteration).
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &str, details: &str) {
        let mut pairs = Pair::all(headers);
        // SAFETY: hook-time stream pointer; header, body and details buffers alive for the call
        // (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                pairs.as_mut_ptr(),
                pairs.len(),
                Buffer::of(body.as_bytes()),
                Buffer::of(details.as_bytes()),
            )
        }
    }

    /// Answers a gRPC request with a trailers-only gRPC error (`grpc-status`, `grpc-message`, and
    /// `headers`), ending the stream. Envoy 1.40's `send_response` gives its local reply
    /// `grpc-status: 0` whatever the HTTP status, so a refused gRPC call would read as a success.
    pub fn send_grpc_refusal(&self, grpc_status: u32, headers: &[(&str, &str)], message: &str) {
        let grpc_status = grpc_status.to_string();
        let mut all = vec![
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", grpc_status.as_str()),
            ("grpc-message", message),
        ];
        all.extend(headers.iter().filter(|(name, _)| *name != "content-type"));
        let mut pairs = Pair::all(&all);
        // SAFETY: hook-time stream pointer; header buffers alive for the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_send_response_headers(
                self.ptr,
                pairs.as_mut_ptr(),
                pairs.len(),
                true,
            )
        }
    }

    /// Sets string dynamic metadata under `namespace` (for access logs and later filters): the
    /// fields that are there, in one call.
    pub fn set_metadata<const N: usize>(&self, namespace: &str, fields: [Option<(&str, &str)>; N]) {
        let mut pairs = [Pair::EMPTY; N];
        let mut count = 0;
        for (key, value) in fields.into_iter().flatten() {
            pairs[count] = Pair::of(key.as_bytes(), value.as_bytes());
            count += 1;
        }
        // SAFETY: hook-time stream pointer; buffers alive for the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
                self.ptr,
                Buffer::of(namespace.as_bytes()),
                pairs.as_ptr(),
                count,
            )
        }
    }

    /// Adds one to a counter of this stream's configuration.
    pub fn increment_counter<const N: usize>(&self, id: usize, labels: [&str; N]) {
        let mut labels = labels.map(|l| Buffer::of(l.as_bytes()));
        // SAFETY: hook-time stream pointer; label buffers alive for the call.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id,
                labels.as_mut_ptr(),
                labels.len(),
                1,
            )
        };
    }

    /// Resumes a request this filter stopped with StopIteration.
    pub fn continue_decoding(&self) {
        // SAFETY: hook-time stream pointer (called from on_http_filter_scheduled).
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr) }
    }

    /// A scheduler to resume this stream from another thread.
    pub fn scheduler(&self) -> Option<StreamScheduler> {
        // SAFETY: hook-time stream pointer.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.ptr) };
        (!ptr.is_null()).then_some(StreamScheduler(ptr))
    }
}

/// An HTTP callout's answer, copied out of Envoy's buffers.
#[derive(Debug, Default)]
pub struct CalloutResponse {
    /// `None` when the callout failed (reset, too large) or had no `:status`.
    pub status: Option<u16>,
    pub cache_control: Option<String>,
    pub body: Vec<u8>,
}

/// Logs a caught panic; never formats the payload into anything but the log.
fn report_panic(hook: &str) {
    log(
        Level::Error,
        &format!("certbound: internal error in {hook}; failing closed"),
    );
}

fn guard<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            report_panic(hook);
            fallback
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Hooks. Names, parameters and return types follow abi.h; every body is guarded.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: Buffer,
    config: Buffer,
) -> *const c_void {
    guard("config_new", std::ptr::null(), || {
        // SAFETY: Envoy passes a name buffer valid for the duration of this hook.
        let name = unsafe { name.bytes() };
        // SAFETY: likewise for the configuration buffer.
        let config = unsafe { config.bytes() };
        match crate::module::new_config(ConfigHandle(config_envoy), name, config) {
            Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

/// The configuration behind a module pointer.
///
/// # Safety
/// `ptr` must be a pointer returned by `config_new` and not yet destroyed.
unsafe fn config_ref<'a>(ptr: *const c_void) -> &'a Arc<FilterConfig> {
    // SAFETY: as the caller promises, a live Box<Arc<FilterConfig>> from config_new.
    unsafe { &*ptr.cast::<Arc<FilterConfig>>() }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard("config_destroy", (), || {
        // SAFETY: Envoy destroys each config it created exactly once; the Box is ours.
        let config = unsafe { Box::from_raw(config.cast_mut().cast::<Arc<FilterConfig>>()) };
        config.shutdown();
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    config: *const c_void,
    event: u64,
) {
    guard("config_scheduled", (), || {
        // SAFETY: Envoy passes the pointer config_new returned, alive until config_destroy.
        unsafe { config_ref(config) }.on_scheduled(event)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    config: *const c_void,
    callout: u64,
    result: i32,
    headers: *const Pair,
    headers_len: usize,
    chunks: *const Buffer,
    chunks_len: usize,
) {
    guard("config_http_callout_done", (), || {
        let mut response = CalloutResponse::default();
        if result == CALLOUT_SUCCESS {
            if !headers.is_null() {
                // SAFETY: Envoy passes `headers_len` headers valid during this hook.
                let headers = unsafe { std::slice::from_raw_parts(headers, headers_len) };
                for header in headers {
                    let key = Buffer {
                        ptr: header.key_ptr,
                        len: header.key_len,
                    };
                    let value = Buffer {
                        ptr: header.value_ptr,
                        len: header.value_len,
                    };
                    // SAFETY: the key points into Envoy's header map, valid during this hook.
                    let key = unsafe { key.bytes() };
                    // SAFETY: likewise for the value; both are copied before the hook returns.
                    let value = unsafe { value.bytes() };
                    let value = String::from_utf8_lossy(value);
                    if key == b":status" {
                        response.status = value.parse().ok();
                    } else if key.eq_ignore_ascii_case(b"cache-control") {
                        response.cache_control = Some(value.into_owned());
                    }
                }
            }
            if !chunks.is_null() {
                // SAFETY: Envoy passes `chunks_len` body buffers valid during this hook.
                let chunks = unsafe { std::slice::from_raw_parts(chunks, chunks_len) };
                for chunk in chunks {
                    // SAFETY: each chunk is valid during this hook; copied at once.
                    response.body.extend_from_slice(unsafe { chunk.bytes() });
                }
            }
        }
        // SAFETY: Envoy passes the pointer config_new returned, alive until config_destroy.
        unsafe { config_ref(config) }.on_callout_done(callout, response)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: Buffer,
    config: Buffer,
) -> *const c_void {
    guard("per_route_config_new", std::ptr::null(), || {
        // SAFETY: Envoy passes a name buffer valid for the duration of this hook.
        let name = unsafe { name.bytes() };
        // SAFETY: likewise for the configuration buffer.
        let config = unsafe { config.bytes() };
        match crate::module::new_route_settings(name, config) {
            Some(settings) => Box::into_raw(Box::new(TaggedRoute {
                tag: ROUTE_TAG,
                settings,
            }))
            .cast_const()
            .cast(),
            None => std::ptr::null(),
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    config: *const c_void,
) {
    guard("per_route_config_destroy", (), || {
        // SAFETY: Envoy destroys each per-route config it created exactly once; the Box is ours.
        drop(unsafe { Box::from_raw(config.cast_mut().cast::<TaggedRoute>()) });
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    guard("filter_new", std::ptr::null(), || {
        // SAFETY: Envoy passes the pointer config_new returned, alive until config_destroy.
        let config = unsafe { config_ref(config) };
        Box::into_raw(Box::new(Filter::new(Arc::clone(config))))
            .cast_const()
            .cast()
    })
}

/// The stream and this module's filter for a per-stream hook.
///
/// # Safety
/// `filter_envoy` must be the stream pointer Envoy passes to the current hook, and `filter` the
/// pointer `filter_new` returned for that stream, not yet destroyed.
unsafe fn stream_and_filter<'h>(
    filter_envoy: *mut c_void,
    filter: *const c_void,
) -> (Stream<'h>, &'h mut Filter) {
    let stream = Stream {
        ptr: filter_envoy,
        _hook: PhantomData,
    };
    // SAFETY: a live Box<Filter> from filter_new; hooks of one stream run on one worker, one
    // at a time, so this is the only reference during the hook.
    (stream, unsafe { &mut *filter.cast_mut().cast::<Filter>() })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the pointers Envoy passes to this stream's hook.
    let (mut stream, filter) = unsafe { stream_and_filter(filter_envoy, filter) };
    match catch_unwind(AssertUnwindSafe(|| filter.on_request_headers(&mut stream))) {
        Ok(true) => CONTINUE,
        Ok(false) => STOP_ITERATION,
        Err(_) => {
            report_panic("request_headers");
            crate::filter::answer_internal_error(&stream);
            STOP_ITERATION
        }
    }
}

/// Request body: held until the request is allowed. Returning Continue while a decision waits
/// would make Envoy resume the filter chain, headers included, with no decision.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the pointers Envoy passes to this stream's hook.
    let (_, filter) = unsafe { stream_and_filter(filter_envoy, filter) };
    if filter.request_may_pass() {
        CONTINUE
    } else {
        STOP_ITERATION_AND_WATERMARK
    }
}

/// Request trailers: held until the request is allowed, as the body.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
) -> u32 {
    // SAFETY: the pointers Envoy passes to this stream's hook.
    let (_, filter) = unsafe { stream_and_filter(filter_envoy, filter) };
    if filter.request_may_pass() {
        CONTINUE
    } else {
        STOP_ITERATION
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    event: u64,
) {
    // SAFETY: the pointers Envoy passes to this stream's hook.
    let (stream, filter) = unsafe { stream_and_filter(filter_envoy, filter) };
    if catch_unwind(AssertUnwindSafe(|| filter.on_scheduled(&stream, event))).is_err() {
        report_panic("scheduled");
        crate::filter::answer_internal_error(&stream);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the pointers Envoy passes to this stream's hook.
    let (stream, filter) = unsafe { stream_and_filter(filter_envoy, filter) };
    guard("response_headers", CONTINUE, || {
        filter.on_response_headers(&stream);
        CONTINUE
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard("filter_destroy", (), || {
        // SAFETY: Envoy destroys each filter it created exactly once; the Box is ours.
        let filter = unsafe { Box::from_raw(filter.cast_mut().cast::<Filter>()) };
        filter.destroy();
    })
}

/// The hooks this module has no use for: Envoy requires them all to be exported.
mod unused {
    use super::*;

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
        _: *mut c_void,
        _: *const c_void,
        _end_of_stream: bool,
    ) -> u32 {
        CONTINUE
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
        _: *mut c_void,
        _: *const c_void,
    ) -> u32 {
        CONTINUE
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
        _: *mut c_void,
        _: *const c_void,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
        _: *mut c_void,
        _: *const c_void,
        _callout: u64,
        _result: i32,
        _headers: *const Pair,
        _headers_len: usize,
        _chunks: *const Buffer,
        _chunks_len: usize,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
        _: *mut c_void,
        _: *const c_void,
        _stream: u64,
        _headers: *const Pair,
        _headers_len: usize,
        _end_stream: bool,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
        _: *mut c_void,
        _: *const c_void,
        _stream: u64,
        _data: *const Buffer,
        _data_len: usize,
        _end_stream: bool,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
        _: *mut c_void,
        _: *const c_void,
        _stream: u64,
        _trailers: *const Pair,
        _trailers_len: usize,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
        _: *mut c_void,
        _: *const c_void,
        _stream: u64,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
        _: *mut c_void,
        _: *const c_void,
        _stream: u64,
        _reason: i32,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
        _: *mut c_void,
        _: *const c_void,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
        _: *mut c_void,
        _: *const c_void,
    ) {
    }
}
