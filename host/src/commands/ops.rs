//! `hpff plan --ops`: the schedule op by op, every buffer with its value's name, offset,
//! size and lifetime, and which values hold the bytes of the peak.
//!
//! A value is born where an op writes a buffer without reading it; a later op that reads
//! or updates a buffer starting at the same offset uses that value (the schedule reads
//! smaller views of a buffer at its start). A value read before anything wrote it came
//! from outside the step: the input batch.

use std::collections::HashMap;
use std::fmt::Write as _;

use hpff_core::plan::{Access, Op, Plan};
use serde::Serialize;

/// One value on the activation stack.
#[derive(Debug, Clone, Serialize)]
pub struct Value {
    /// `op#index.field` of the op that wrote it.
    pub name: String,
    /// Bytes from the start of the activation stack.
    pub offset: usize,
    pub bytes: usize,
    /// First and last op that touch it.
    pub first: usize,
    pub last: usize,
}

impl Value {
    fn end(&self) -> usize {
        self.offset + self.bytes
    }
}

/// One buffer of an op: its field, how the op uses it, and the value (index into `values`).
#[derive(Debug, Clone, Serialize)]
pub struct Use {
    pub field: &'static str,
    pub access: &'static str,
    pub value: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub op: &'static str,
    pub buffers: Vec<Use>,
}

/// A schedule with its values and the peak.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub ops: Vec<Row>,
    pub values: Vec<Value>,
    /// The op at which the live values reach highest, and that height in bytes.
    pub peak_op: usize,
    pub peak_bytes: usize,
    /// The values live at the peak op, by offset.
    pub live_at_peak: Vec<usize>,
}

/// The listing of a training step (`train`) or of an eval pass.
pub fn listing(plan: &Plan, train: bool) -> Listing {
    let base = plan.act_off();
    let f = std::mem::size_of::<f32>();
    let mut ops = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut at: HashMap<usize, usize> = HashMap::new();
    let mut visit = |op: &Op| {
        let i = ops.len();
        let mut buffers = Vec::new();
        op.for_each_buf(|field, access, buf| {
            let (offset, bytes) = ((buf.off - base) * f, buf.len * f);
            let known = at.get(&buf.off).copied().filter(|_| access != Access::Write);
            let v = match known {
                Some(v) => {
                    values[v].last = i;
                    values[v].bytes = values[v].bytes.max(bytes);
                    v
                }
                None => {
                    let name =
                        if access == Access::Write { format!("{}#{i}.{field}", op.name()) } else { "input".into() };
                    values.push(Value { name, offset, bytes, first: i, last: i });
                    at.insert(buf.off, values.len() - 1);
                    values.len() - 1
                }
            };
            buffers.push(Use { field, access: access.name(), value: v });
        });
        ops.push(Row { op: op.name(), buffers });
    };
    if train {
        plan.train_step(&mut visit);
    } else {
        plan.eval_step(&mut visit);
    }
    let height = |i: usize| values.iter().filter(|v| v.first <= i && i <= v.last).map(Value::end).max().unwrap_or(0);
    let (peak_op, peak_bytes) =
        (0..ops.len()).map(|i| (i, height(i))).fold((0, 0), |a, b| if b.1 > a.1 { b } else { a });
    let mut live_at_peak: Vec<usize> =
        (0..values.len()).filter(|&v| values[v].first <= peak_op && peak_op <= values[v].last).collect();
    live_at_peak.sort_by_key(|&v| values[v].offset);
    Listing { ops, values, peak_op, peak_bytes, live_at_peak }
}

/// The listing as text: one line per op, then the values live at the peak.
pub fn render(title: &str, l: &Listing) -> String {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{title}: {} ops; buffers as value [offset +bytes], offsets from the activation stack",
        l.ops.len()
    );
    for (i, row) in l.ops.iter().enumerate() {
        let _ = write!(s, "  {i:>5}  {:<22}", row.op);
        for u in &row.buffers {
            let v = &l.values[u.value];
            let _ = write!(s, " {}({}) {} [{} +{}]", u.field, u.access, v.name, v.offset, v.bytes);
        }
        s.push('\n');
    }
    let op = l.ops.get(l.peak_op).map_or("-", |r| r.op);
    let _ = writeln!(s, "peak: {:.2} MiB at op {} ({op}); live values by offset:", mib(l.peak_bytes), l.peak_op);
    let _ = writeln!(s, "  {:>12} {:>12} {:>9}  {:<13} value", "offset", "bytes", "MiB", "ops");
    for &v in &l.live_at_peak {
        let v = &l.values[v];
        let life = format!("{}..={}", v.first, v.last);
        let _ = writeln!(s, "  {:>12} {:>12} {:>9.2}  {life:<13} {}", v.offset, v.bytes, mib(v.bytes), v.name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, Method};
    use hpff_core::partition::{Partition, TableKind};

    #[test]
    fn the_listing_names_every_buffer_and_finds_the_planned_peak() {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        for (base, hpff, k) in [(Base::E2e, false, 1), (Base::InfoPro, false, 4), (Base::InfoPro, true, 4)] {
            let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
            let plan = Plan::new(arch, part, Method::reference(base, hpff), 8, [0.0; 4], [1.0; 4]).unwrap();
            for (train, planned) in [(true, plan.memory().activations), (false, plan.memory().eval_activations)] {
                let l = listing(&plan, train);
                assert!(l.values.iter().all(|v| v.first <= v.last && v.end() <= planned));
                // The first value read is the input batch, which no op writes.
                assert_eq!((l.values[0].name.as_str(), l.values[0].offset), ("input", 0));
                // The live values reach the planned peak, up to a buffer allocated but not yet written.
                assert!(
                    l.peak_bytes <= planned && l.peak_bytes as f64 >= 0.9 * planned as f64,
                    "{} of {planned}",
                    l.peak_bytes
                );
                let text = render("step", &l);
                assert_eq!(text.lines().count(), 1 + l.ops.len() + 2 + l.live_at_peak.len());
                assert!(text.contains(&format!("at op {} ({})", l.peak_op, l.ops[l.peak_op].op)));
            }
        }
    }
}
