//! CUDA graphs: a plan's whole op sequence captured once on the executor's stream and
//! replayed on later steps. Every address in it is fixed (one arena, buffers sized at
//! construction), and the per-step values (labels, lr and the SGD settings) are read
//! from device memory the host refreshes before each launch, so a replay is exactly the
//! direct launch sequence.

use crate::device::drv;
use crate::error::CudaError;
use cudarc::driver::{result, sys};
use hpff_core::plan::Plan;

/// Environment variable: `0` (or `false`, `off`, `no`) launches ops directly, without graphs.
pub const GRAPHS_ENV: &str = "HPFF_CUDA_GRAPHS";

/// Whether graphs are enabled by the environment.
pub(crate) fn graphs_enabled() -> bool {
    match std::env::var(GRAPHS_ENV) {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"),
        Err(_) => true,
    }
}

/// An instantiated graph, destroyed on drop.
#[derive(Debug)]
pub(crate) struct GraphExec(sys::CUgraphExec);

impl GraphExec {
    /// Enqueues one replay on `stream`.
    pub(crate) fn launch(&self, stream: sys::CUstream) -> Result<(), CudaError> {
        // SAFETY: a live executable graph of the current context and a stream of it.
        unsafe { result::graph::launch(self.0, stream) }.map_err(drv("cuGraphLaunch"))
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: instantiated once, destroyed once, after the stream finished.
        let _ = unsafe { result::graph::exec_destroy(self.0) };
    }
}

/// Captures what `enqueue` puts on `stream` into an executable graph. `Ok(Err(why))`
/// when capture or instantiation did not work (the caller falls back to direct
/// launches); the stream is out of capture mode either way.
pub(crate) fn capture(
    stream: sys::CUstream,
    enqueue: impl FnOnce() -> Result<(), CudaError>,
) -> Result<GraphExec, String> {
    // Thread-local mode: other threads' unrelated CUDA calls (another executor's
    // allocations) do not invalidate this capture.
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    // SAFETY: a live stream of the current context, not already capturing.
    unsafe { result::stream::begin_capture(stream, mode) }
        .map_err(|e| CudaError::driver("cuStreamBeginCapture", e).to_string())?;
    let work = enqueue();
    // SAFETY: ends the capture begun above on the same stream (always, so the stream
    // leaves capture mode even when enqueueing failed).
    let graph = unsafe { result::stream::end_capture(stream) };
    let graph = match (work, graph) {
        (Ok(()), Ok(g)) if !g.is_null() => g,
        (Ok(()), Ok(_)) => return Err("stream capture returned no graph".into()),
        (Err(e), g) => {
            if let Ok(g) = g {
                if !g.is_null() {
                    // SAFETY: a graph returned by the capture, destroyed once.
                    let _ = unsafe { result::graph::destroy(g) };
                }
            }
            return Err(format!("capture: {e}"));
        }
        (Ok(()), Err(e)) => return Err(CudaError::driver("cuStreamEndCapture", e).to_string()),
    };
    let mut exec: sys::CUgraphExec = core::ptr::null_mut();
    // SAFETY: a valid graph and out-pointer; flags 0 is the default instantiation.
    let inst = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }.result();
    // SAFETY: the executable graph does not need the graph it was made from.
    let _ = unsafe { result::graph::destroy(graph) };
    match inst {
        Ok(()) => Ok(GraphExec(exec)),
        Err(e) => Err(CudaError::driver("cuGraphInstantiateWithFlags", e).to_string()),
    }
}

/// Graphs kept per executor: the full and the last (smaller) batch, train and eval.
const MAX_GRAPHS: usize = 8;

/// The captured graphs of an executor, keyed by (train or eval, plan).
#[derive(Debug, Default)]
pub(crate) struct GraphCache {
    /// (train, plan, graph, device bytes its capture and instantiation took).
    entries: Vec<(bool, Plan, GraphExec, usize)>,
    /// Plans run once directly: the first run of a plan is a warm-up outside capture,
    /// so cuBLAS's and the driver's lazy first-use work (kernel loading, heuristics)
    /// never happens inside a capture.
    warm: Vec<(bool, Plan)>,
}

impl GraphCache {
    pub(crate) fn get(&self, train: bool, plan: &Plan) -> Option<&GraphExec> {
        self.entries.iter().find(|(t, p, ..)| *t == train && p == plan).map(|(_, _, g, _)| g)
    }

    /// Whether `plan` ran before; marks it as run.
    pub(crate) fn warmed(&mut self, train: bool, plan: &Plan) -> bool {
        if self.warm.iter().any(|(t, p)| *t == train && p == plan) {
            return true;
        }
        if self.warm.len() == MAX_GRAPHS {
            self.warm.remove(0);
        }
        self.warm.push((train, plan.clone()));
        false
    }

    pub(crate) fn insert(&mut self, train: bool, plan: &Plan, g: GraphExec, bytes: usize) {
        if self.entries.len() == MAX_GRAPHS {
            self.entries.remove(0);
        }
        self.entries.push((train, plan.clone(), g, bytes));
    }

    /// Device memory the cached graphs took (measured at capture).
    pub(crate) fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.3).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.warm.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
