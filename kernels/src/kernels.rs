//! The kernel table: every CUDA source, every kernel in it and the kinds of its
//! arguments. Launches name a [`K`]; the table gives the source to compile, the symbol
//! to load and the signature each launch is checked against (a test parses the `.cu`
//! files and checks the signatures against the sources).

/// Code shared by every source, prepended before compilation (NVRTC gets no include path).
pub(crate) const COMMON: &str = include_str!("../cu/common.cuh");

/// A CUDA source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Elementwise,
    Batchnorm,
    Conv,
    Resize,
    MaxPool,
    Loss,
}

impl Src {
    pub(crate) const ALL: [Src; 6] =
        [Src::Elementwise, Src::Batchnorm, Src::Conv, Src::Resize, Src::MaxPool, Src::Loss];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Src::Elementwise => "elementwise.cu",
            Src::Batchnorm => "batchnorm.cu",
            Src::Conv => "conv.cu",
            Src::Resize => "resize.cu",
            Src::MaxPool => "maxpool.cu",
            Src::Loss => "loss.cu",
        }
    }

    pub(crate) const fn text(self) -> &'static str {
        match self {
            Src::Elementwise => include_str!("../cu/elementwise.cu"),
            Src::Batchnorm => include_str!("../cu/batchnorm.cu"),
            Src::Conv => include_str!("../cu/conv.cu"),
            Src::Resize => include_str!("../cu/resize.cu"),
            Src::MaxPool => include_str!("../cu/maxpool.cu"),
            Src::Loss => include_str!("../cu/loss.cu"),
        }
    }

    /// The kernels of this source, in table order.
    pub(crate) fn kernels(self) -> impl Iterator<Item = (K, &'static KernelDecl)> {
        KERNELS.iter().enumerate().filter(move |(_, d)| d.src == self).map(|(i, d)| (K::ALL[i], d))
    }
}

/// One kernel: its source, symbol and argument kinds (`p` pointer, `l` 64-bit integer,
/// `i` 32-bit integer, `f` float, `d` double).
#[derive(Debug)]
pub(crate) struct KernelDecl {
    pub src: Src,
    pub name: &'static str,
    pub sig: &'static str,
}

macro_rules! kernels {
    ($($var:ident = $src:ident $name:literal $sig:literal;)*) => {
        /// A kernel of the table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum K { $($var),* }
        impl K {
            pub(crate) const ALL: &'static [K] = &[$(K::$var),*];
        }
        pub(crate) const KERNELS: &[KernelDecl] = &[$(KernelDecl { src: Src::$src, name: $name, sig: $sig }),*];
    };
}

kernels! {
    Fill = Elementwise "fill_f32" "lpf";
    Relu = Elementwise "relu_inplace" "lp";
    AddRelu = Elementwise "add_relu" "lpp";
    Add = Elementwise "add_assign" "lpp";
    Bf16Narrow = Elementwise "bf16_narrow" "lpp";
    Bf16Widen = Elementwise "bf16_widen" "lpp";
    F16Narrow = Elementwise "f16_narrow" "lpp";
    F16Widen = Elementwise "f16_widen" "lpp";
    Sigmoid = Elementwise "sigmoid_forward" "lpp";
    SigmoidBackward = Elementwise "sigmoid_backward" "lppp";
    ReluBackward = Elementwise "relu_backward" "lpp";
    Restore = Elementwise "restore" "lppilffffffff";
    AddRowBias = Elementwise "add_row_bias" "lppi";
    ColSumAdd = Elementwise "col_sum_add" "lppi";
    PoolForward = Elementwise "pool_forward" "lppl";
    PoolBackward = Elementwise "pool_backward" "lppl";
    SgdStep = Elementwise "sgd_step" "lpppp";
    FlagNonfinite = Elementwise "flag_nonfinite" "lppi";
    ChanPartialSum = Batchnorm "chan_partial_sum" "pillip";
    ChanPartialSqdev = Batchnorm "chan_partial_sqdev" "pillipp";
    ChanPartialBwd = Batchnorm "chan_partial_bwd" "ppillipp";
    BnMean = Batchnorm "bn_mean" "lpilp";
    BnFinalize = Batchnorm "bn_finalize" "lpilppiff";
    BnEvalStats = Batchnorm "bn_eval_stats" "lppf";
    BnForward = Batchnorm "bn_forward" "lppilppp";
    BnBackwardFinalize = Batchnorm "bn_backward_finalize" "lpipppi";
    BnBackwardInput = Batchnorm "bn_backward_input" "lpppilpppf";
    ChanSumAdd = Batchnorm "chan_sum_add" "lpip";
    Im2col = Conv "im2col" "lppiiiiiiili";
    RowsToNchw = Conv "rows_to_nchw" "lpppili";
    NchwToRows = Conv "nchw_to_rows" "lppili";
    Col2im = Conv "col2im" "lppiiiiiiiii";
    ResizeForward = Resize "resize_forward" "lppiiiiiiiii";
    ResizeBackward = Resize "resize_backward" "lppiiiiiiiii";
    CropForward = Resize "crop_forward" "lppiiiiii";
    MaxPoolForward = MaxPool "maxpool_forward" "lppiiiiiii";
    MaxPoolBackward = MaxPool "maxpool_backward" "lpppiiiiiii";
    CrossEntropy = Loss "cross_entropy" "iipppfpi";
    BcePartial = Loss "bce_partial" "lipppflp";
    LossFinalize = Loss "loss_finalize" "ipdpi";
    SupconSim = Loss "supcon_sim" "liippd";
    SupconRows = Loss "supcon_rows" "lpppd";
    SupconGrad = Loss "supcon_grad" "liipppd";
    L2normForward = Loss "l2norm_forward" "lipp";
    L2normBackward = Loss "l2norm_backward" "lippp";
}

impl K {
    pub(crate) fn decl(self) -> &'static KernelDecl {
        &KERNELS[self as usize]
    }
}

/// Number of kernels in the table.
pub fn kernel_count() -> usize {
    KERNELS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Argument kinds of every `extern "C" __global__` function of `text`, by name.
    fn parse(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("extern \"C\" __global__ void ") {
            rest = &rest[at + "extern \"C\" __global__ void ".len()..];
            let open = rest.find('(').unwrap();
            let name = rest[..open].trim().to_string();
            let close = rest.find(')').unwrap();
            let params = &rest[open + 1..close];
            let sig: String = params
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    if p.contains('*') {
                        'p'
                    } else if p.starts_with("i64") || p.starts_with("long long") {
                        'l'
                    } else if p.starts_with("int") || p.starts_with("unsigned int") {
                        'i'
                    } else if p.starts_with("float") {
                        'f'
                    } else if p.starts_with("double") {
                        'd'
                    } else {
                        panic!("unknown parameter type in {name}: {p}")
                    }
                })
                .collect();
            out.push((name, sig));
            rest = &rest[close..];
        }
        out
    }

    #[test]
    fn table_matches_the_sources() {
        for src in Src::ALL {
            let found = parse(src.text());
            let listed: Vec<(String, String)> =
                src.kernels().map(|(_, d)| (d.name.to_string(), d.sig.to_string())).collect();
            assert_eq!(found, listed, "kernels of {}", src.name());
        }
        assert_eq!(K::ALL.len(), KERNELS.len());
        for (i, k) in K::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
