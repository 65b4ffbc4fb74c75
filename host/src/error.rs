//! Typed errors: bad arguments are caught before any launch and name the argument; CUDA failures
//! carry CUDA's own error name.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// An argument is unusable; nothing was launched.
    InvalidArgument { argument: &'static str, problem: String },
    /// No kernel configuration exists for this head dim.
    UnsupportedHeadDim { argument: &'static str, head_dim: usize, supported: &'static [u32] },
    /// The GPU is older than the kernels need (compute capability 8.0, Ampere).
    UnsupportedDevice { name: String, compute_capability: (i32, i32) },
    /// The library was built without fresh PTX (see `cargo xtask build-ptx`).
    PtxUnavailable { problem: String },
    /// A CUDA driver call failed: CUDA's error name (`CUDA_ERROR_…`) and numeric code.
    Cuda { operation: &'static str, name: String, code: u32 },
}

impl Error {
    pub(crate) fn invalid(argument: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidArgument { argument, problem: problem.into() }
    }

    /// CUDA's name for the error (`CUDA_ERROR_NO_DEVICE`, …), if this is a CUDA failure.
    pub fn cuda_name(&self) -> Option<&str> {
        match self {
            Error::Cuda { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { argument, problem } => write!(f, "invalid argument `{argument}`: {problem}"),
            Error::UnsupportedHeadDim { argument, head_dim, supported } => {
                write!(
                    f,
                    "invalid argument `{argument}`: head_dim {head_dim} is not supported (supported: {supported:?})"
                )
            }
            Error::UnsupportedDevice { name, compute_capability: (major, minor) } => {
                write!(f, "{name} (compute capability {major}.{minor}) is not supported: the kernels need 8.0 or newer")
            }
            Error::PtxUnavailable { problem } => write!(f, "kernels unavailable: {problem}"),
            Error::Cuda { operation, name, code } => write!(f, "{operation} failed: {name} (CUresult {code})"),
        }
    }
}

impl std::error::Error for Error {}

/// CUDA's symbolic name for a driver result, as `cuGetErrorName` reports it.
fn cuda_error_name(result: cust::sys::CUresult) -> String {
    let mut ptr: *const std::os::raw::c_char = std::ptr::null();
    // SAFETY: cuGetErrorName needs no context; it writes a pointer to a static string or
    // leaves it null for codes it does not know.
    let status = unsafe { cust::sys::cuGetErrorName(result, &mut ptr) };
    if status == cust::sys::CUresult::CUDA_SUCCESS && !ptr.is_null() {
        // SAFETY: cuGetErrorName returned a NUL-terminated static string.
        return unsafe { std::ffi::CStr::from_ptr(ptr) }.to_string_lossy().into_owned();
    }
    format!("CUresult {}", result as u32)
}

/// The typed error for a raw driver result, or Ok for CUDA_SUCCESS (public for bindings that
/// call the driver API themselves).
pub fn check_raw(result: cust::sys::CUresult, operation: &'static str) -> Result<()> {
    if result == cust::sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda { operation, name: cuda_error_name(result), code: result as u32 })
    }
}

fn from_cust(error: cust::error::CudaError, operation: &'static str) -> Error {
    let code = error as u32;
    let name = if code <= 999 {
        // SAFETY: cust builds every CudaError below 1000 from a CUresult with the same
        // discriminant (its own Display converts back the same way), so `code` is a valid CUresult.
        cuda_error_name(unsafe { std::mem::transmute::<u32, cust::sys::CUresult>(code) })
    } else {
        format!("{error:?}")
    };
    Error::Cuda { operation, name, code }
}

/// Attach the operation's name and CUDA's error name to a driver result (public for bindings
/// that call cust themselves, such as the Python package).
pub trait CudaContext<T> {
    fn during(self, operation: &'static str) -> Result<T>;
}

impl<T> CudaContext<T> for cust::error::CudaResult<T> {
    fn during(self, operation: &'static str) -> Result<T> {
        self.map_err(|error| from_cust(error, operation))
    }
}
