//! The log writer: a Check appends its line to a shared buffer and makes no system call; a
//! background thread writes what accumulated every `interval`, or sooner once
//! [`WAKE_BYTES`] are waiting.
//!
//! A writer that woke its thread for every line (tracing-appender's) cost about seven system
//! calls per Check at moderate load — a futex wake, the writer's spin-then-yield and futex
//! wait, and one `write` — more than the Check's own socket I/O (strace, BENCHMARKS.md).
//! Batching by time makes logging nearly free at any rate, for at most `interval` of delay.
//!
//! Lossy on purpose: when stderr cannot keep up and `limit` bytes are waiting, further lines are
//! dropped and counted ([`LogWriter::dropped_lines`]) rather than slowing decisions down. The
//! [`FlushGuard`] writes what is waiting when dropped (at exit).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Waiting bytes that wake the writer before its interval ends.
pub const WAKE_BYTES: usize = 64 * 1024;

/// A cheap handle (an `Arc`) to the shared buffer; one `write` call is one whole line.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    limit: usize,
    dropped_lines: AtomicU64,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closed: bool,
}

/// Stops the writer thread when dropped, after it has written everything waiting.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread over `out`.
    pub fn spawn(
        out: impl Write + Send + 'static,
        interval: Duration,
        limit: usize,
    ) -> std::io::Result<(LogWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            limit,
            dropped_lines: AtomicU64::new(0),
        });
        let thread = std::thread::Builder::new()
            .name("certbound-log".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_batches(&shared, out, interval)
            })?;
        let guard = FlushGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((LogWriter { shared }, guard))
    }

    /// Queues one line (its newline included). Dropped and counted when `limit` bytes wait.
    pub fn write_line(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.closed || state.buffer.len() + line.len() > self.shared.limit {
            drop(state);
            self.shared.dropped_lines.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = state.buffer.len();
        state.buffer.extend_from_slice(line);
        if before < WAKE_BYTES && state.buffer.len() >= WAKE_BYTES {
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped so far (buffer full, or stderr failing).
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped_lines.load(Ordering::Relaxed)
    }
}

/// For tracing-subscriber: each event is formatted whole and written with one call.
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a buffer that is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write_batches(shared: &Shared, mut out: impl Write, interval: Duration) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = shared.lock();
            if state.buffer.len() < WAKE_BYTES && !state.closed {
                state = shared
                    .wake
                    .wait_timeout(state, interval)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Swap buffers: the callers get the (empty, allocated) one written last time.
            std::mem::swap(&mut state.buffer, &mut batch);
            state.closed
        };
        if !batch.is_empty() {
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                let lines = batch.iter().filter(|&&b| b == b'\n').count();
                shared
                    .dropped_lines
                    .fetch_add(lines as u64, Ordering::Relaxed);
            }
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// An `out` that hands every write to the test.
    struct Sink(mpsc::Sender<Vec<u8>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn lines_arrive_whole_and_in_order_when_the_guard_drops() {
        let (tx, rx) = mpsc::channel();
        let (writer, guard) = LogWriter::spawn(Sink(tx), LONG, 1 << 20).unwrap();
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            writer.write_line(line.as_bytes());
        }
        drop(guard);
        let written: Vec<u8> = rx.try_iter().flatten().collect();
        assert_eq!(String::from_utf8(written).unwrap(), lines.concat());
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn lines_from_many_threads_are_never_interleaved() {
        let (tx, rx) = mpsc::channel();
        let (writer, guard) =
            LogWriter::spawn(Sink(tx), Duration::from_millis(1), 1 << 24).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = writer.clone();
                s.spawn(move || {
                    for i in 0..2000 {
                        writer.write_line(
                            format!("thread {t} line {i} {}\n", "x".repeat(i % 97)).as_bytes(),
                        );
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(rx.try_iter().flatten().collect()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let (t, i): (usize, usize) = (parts[1].parse().unwrap(), parts[3].parse().unwrap());
            assert_eq!(i, next[t], "{line}");
            assert_eq!(parts[4].len(), i % 97);
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4]);
    }

    #[test]
    fn the_interval_writes_without_a_wake() {
        let (tx, rx) = mpsc::channel();
        let (writer, _guard) =
            LogWriter::spawn(Sink(tx), Duration::from_millis(10), 1 << 20).unwrap();
        writer.write_line(b"one line\n");
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("written within the interval");
        assert_eq!(got, b"one line\n");
    }

    #[test]
    fn a_full_batch_wakes_the_writer_before_its_interval() {
        let (tx, rx) = mpsc::channel();
        let (writer, _guard) = LogWriter::spawn(Sink(tx), LONG, 1 << 20).unwrap();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        for _ in 0..WAKE_BYTES / line.len() {
            writer.write_line(&line);
        }
        // The interval is an hour: only the size wake can deliver this in time.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = 0;
        while got < WAKE_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            got += rx.recv_timeout(left).expect("woken by size").len();
        }
        assert_eq!(got, WAKE_BYTES);
    }

    /// An `out` whose writes wait until the test opens the gate.
    struct Gate(Arc<(Mutex<bool>, Condvar)>, mpsc::Sender<usize>);

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cvar) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cvar.wait(open).unwrap();
            }
            let _ = self.1.send(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_beyond_the_limit() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let (writer, guard) =
            LogWriter::spawn(Gate(Arc::clone(&gate), tx), Duration::from_millis(1), 100).unwrap();
        // The thread takes the first line and blocks writing it ...
        writer.write_line(&[b'a'; 10]);
        while !writer.shared.lock().buffer.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ... so 100 bytes can wait; the rest is dropped.
        for _ in 0..15 {
            writer.write_line(&[b'b'; 10]);
        }
        assert_eq!(writer.dropped_lines(), 5);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        assert_eq!(rx.try_iter().sum::<usize>(), 10 + 100);
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted() {
        let (writer, guard) = LogWriter::spawn(Broken, LONG, 1 << 20).unwrap();
        for _ in 0..3 {
            writer.write_line(b"lost\n");
        }
        drop(guard);
        assert_eq!(writer.dropped_lines(), 3);
        writer.write_line(b"after close\n");
        assert_eq!(writer.dropped_lines(), 4);
    }
}
