//! CUDA kernels of the policy head and of a decoder step (feature `cuda`).
//!
//! The kernels are CUDA C in `kernels/cuda/`, compiled at run time by NVRTC for the device's
//! architecture and launched through cudarc. cudarc loads `libcuda` and `libnvrtc` when first used,
//! so nothing here needs a CUDA toolkit to build, and a process on a machine without a GPU only
//! learns it when it asks for one: [`Gpu::open`] then answers [`GpuError::NoDriver`] (or
//! [`GpuError::NoNvrtc`]), never a panic.
//!
//! Each kernel follows a CPU routine of this crate ([`crate::sampling`]) or of the model's CPU
//! forward pass, and is checked against it on a device (`kernels/tests/cuda.rs`).

mod launch;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::{CompileOptions, Ptx};

pub use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
pub use launch::{Attention, Weights};

/// Helpers every kernel file is compiled with (half-precision conversions, block reductions).
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// One CUDA C file and the kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub name: &'static str,
    pub code: &'static str,
    pub kernels: &'static [&'static str],
}

/// The policy head: final norm, gathered-row and full-vocabulary projections, bias, mask and
/// sampling.
pub const POLICY_HEAD: Source = Source {
    name: "policy_head.cu",
    code: include_str!("../../cuda/policy_head.cu"),
    kernels: &[
        "rms_norm",
        "gather_logits_bf16",
        "gather_logits_f16",
        "gather_logits_q8_0",
        "logits_bf16",
        "logits_f16",
        "logits_q8_0",
        "head_choose",
        "sample_full",
    ],
};

/// A decoder step's other kernels: embeddings, RoPE, the MLP activations, paged attention.
pub const FORWARD: Source = Source {
    name: "forward.cu",
    code: include_str!("../../cuda/forward.cu"),
    kernels: &[
        "embed_bf16",
        "rope_neox",
        "silu_mul",
        "gelu_mul",
        "add_inplace",
        "f32_to_bf16_rows",
        "kv_store",
        "paged_attention",
    ],
};

/// Every kernel file.
pub const SOURCES: [Source; 2] = [POLICY_HEAD, FORWARD];

/// What stops the CUDA path. Each message says what is missing and where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no CUDA driver: libcuda.so (the NVIDIA driver's library) is not on this machine's library path"
    )]
    NoDriver,
    #[error(
        "no NVRTC: libnvrtc.so.13 or .12 is not on the library path (install the PyPI package \
         nvidia-cuda-nvrtc-cu12 and add its nvidia/cuda_nvrtc/lib to LD_LIBRARY_PATH)"
    )]
    NoNvrtc,
    #[error("no CUDA device: the driver sees {0} GPUs (asked for device {1})")]
    NoDevice(i32, usize),
    #[error("NVRTC could not compile {file} for {arch}: {log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    #[error("kernel {0} is missing from the compiled module")]
    MissingKernel(&'static str),
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("{0}")]
    Shape(String),
}

/// Whether the NVIDIA driver's library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call writes two integers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(GpuError::Nvrtc(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((major, minor))
}

/// Compiles one kernel file to PTX for a virtual architecture such as `compute_90`. Needs only
/// NVRTC (no driver, no GPU).
pub fn compile(source: &Source, arch: &str) -> Result<Ptx, GpuError> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    let code = format!("{COMMON}\n{}", source.code);
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(source.name.into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(code, options).map_err(|e| GpuError::Compile {
        file: source.name,
        arch: arch.into(),
        log: e.to_string(),
    })
}

/// One GPU with every kernel loaded, and the stream they run on.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    arch: String,
    name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`, compiles every kernel for its architecture and loads them.
    pub fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        if !nvrtc_present() {
            return Err(GpuError::NoNvrtc);
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::NoDevice(count, ordinal));
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = format!("compute_{major}{minor}");
        let name = ctx.name()?;
        let stream = ctx.default_stream();
        let mut functions = HashMap::new();
        for source in &SOURCES {
            let module: Arc<CudaModule> = ctx.load_module(compile(source, &arch)?)?;
            for &kernel in source.kernels {
                let f = module
                    .load_function(kernel)
                    .map_err(|_| GpuError::MissingKernel(kernel))?;
                functions.insert(kernel, f);
            }
        }
        Ok(Gpu {
            ctx,
            stream,
            functions,
            arch,
            name,
        })
    }

    /// The device's name, as the driver gives it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtual architecture the kernels were compiled for (`compute_90` on an H100/H200).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// A zeroed device buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream.alloc_zeros(n)?)
    }

    /// Copies a device buffer back (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, device: &CudaSlice<T>) -> Result<Vec<T>, GpuError> {
        let host = self.stream.clone_dtoh(device)?;
        // A copy into pageable memory returns once done; the wait makes that explicit.
        self.stream.synchronize()?;
        Ok(host)
    }

    /// Waits for every launch so far.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream.synchronize()?)
    }

    fn function(&self, name: &'static str) -> &CudaFunction {
        // Every name a launch asks for is in SOURCES, and `open` loaded them all.
        &self.functions[name]
    }
}
