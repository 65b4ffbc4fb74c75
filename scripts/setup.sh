#!/usr/bin/env bash
# Set up everything this workspace needs to build and test, on a fresh Debian bookworm machine of
# this workplace (see ../shared/TOOLCHAIN.md):
#
#   a. the Rust toolchain pinned in rust-toolchain.toml (RUSTUP_AUTO_INSTALL=0 here, so nothing
#      installs it on first use);
#   b. a libcuda.so to link against (cust 0.3.2 links libcuda at build time). A CUDA toolkit or a
#      system driver library is used when present; otherwise Debian's non-free `libcuda1` is
#      extracted into .cache/libcuda (no system install);
#   c. ptxas, from PyPI's nvidia-cuda-nvcc-cu12, into .cache/nvcc;
#   d. .cache/env.sh, which exports CUDA_LIBRARY_PATH, PTXAS and, on machines without an NVIDIA
#      driver only, LD_LIBRARY_PATH for the extracted libcuda.so.1;
#   e. .cache/venv, a Python virtual environment with maturin (builds the wheel) and pytest
#      (the Python tests); no torch: the CPU-side Python tests need none.
#
# Idempotent: every step checks for its result first, so a second run downloads nothing.
#
#   bash scripts/setup.sh        # install; then `source .cache/env.sh`
#   source scripts/setup.sh      # install and export the environment into this shell
#
# When sourced, the work runs in a child bash (so `set -euo pipefail` does not leak into the
# caller's shell) and then .cache/env.sh is sourced.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    _fa_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    bash "$_fa_root/scripts/setup.sh" || { _fa_rc=$?; unset _fa_root; return "$_fa_rc"; }
    # shellcheck source=/dev/null
    source "$_fa_root/.cache/env.sh"
    unset _fa_root
    return 0
fi

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="$ROOT/.cache"
mkdir -p "$CACHE"
START_NS=$(date +%s%N)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# a. Rust toolchain from rust-toolchain.toml
# ---------------------------------------------------------------------------------------------
TOOLCHAIN_FILE="$ROOT/rust-toolchain.toml"
[[ -f "$TOOLCHAIN_FILE" ]] || die "missing $TOOLCHAIN_FILE"
CHANNEL="$(sed -n 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$TOOLCHAIN_FILE" | head -n1)"
[[ -n "$CHANNEL" ]] || die "no channel in $TOOLCHAIN_FILE"
PROFILE="$(sed -n 's/^[[:space:]]*profile[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$TOOLCHAIN_FILE" | head -n1)"
# components = ["a", "b", ...] on one line
read -r -a COMPONENTS <<<"$(sed -n 's/^[[:space:]]*components[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' "$TOOLCHAIN_FILE" \
    | tr -d '",' | head -n1)"
# The build cannot work without these two, whatever the file says.
for required in rust-src llvm-tools; do
    [[ " ${COMPONENTS[*]-} " == *" $required "* ]] || COMPONENTS+=("$required")
done

# Prints the components of $CHANNEL that are not installed (all of them if the toolchain is not).
missing_components() {
    local installed
    if ! installed="$(rustup component list --toolchain "$CHANNEL" --installed 2>/dev/null)"; then
        printf '%s\n' "${COMPONENTS[@]}"
        return
    fi
    local c
    for c in "${COMPONENTS[@]}"; do
        # Installed names carry the host triple (llvm-tools-x86_64-unknown-linux-gnu), except
        # target-independent ones (rust-src).
        grep -Eq "^${c}(-[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+(-[a-z0-9_]+)?)?$" <<<"$installed" || echo "$c"
    done
}

command -v rustup >/dev/null || die "rustup not found on PATH"
missing="$(missing_components)"
if [[ -z "$missing" ]]; then
    say "toolchain $CHANNEL present with ${COMPONENTS[*]}"
else
    say "installing toolchain $CHANNEL (missing: $(echo $missing))"
    # rustup >= 1.28 installs the toolchain named by rust-toolchain.toml, with its components and
    # profile, when `toolchain install` gets no argument. RUSTUP_TOOLCHAIN would override the file.
    (cd "$ROOT" && env -u RUSTUP_TOOLCHAIN rustup toolchain install) || true
    missing="$(missing_components)"
    if [[ -n "$missing" ]]; then
        # Older rustup (no argument-less install) or a partial install: name everything explicitly.
        comp_args=()
        for c in "${COMPONENTS[@]}"; do comp_args+=(-c "$c"); done
        rustup toolchain install "$CHANNEL" --profile "${PROFILE:-minimal}" "${comp_args[@]}"
        missing="$(missing_components)"
        [[ -z "$missing" ]] || die "toolchain $CHANNEL still lacks: $(echo $missing)"
    fi
    say "toolchain $CHANNEL installed"
fi

# ---------------------------------------------------------------------------------------------
# b. libcuda.so for linking (cust_raw's build script: find_cuda_helper 0.2.0)
# ---------------------------------------------------------------------------------------------
# find_cuda_helper::find_cuda_lib_dirs() takes the ':'-separated dirs of CUDA_LIBRARY_PATH plus
# /opt/cuda, /usr/local/cuda and /usr/local/cuda-*, and for each BASE whose BASE/lib64 is a
# directory emits `-L BASE/lib64 -L BASE/lib64/stubs` (and BASE/targets/x86_64-linux/lib{,/stubs}
# when BASE/targets/x86_64-linux/include/cuda.h exists); it panics if no BASE has a lib64, then
# links `-l cuda`. So CUDA_LIBRARY_PATH must name a dir whose lib64/ holds libcuda.so.
LIBCUDA_DIR="$CACHE/libcuda"
LIBCUDA_LIB="$LIBCUDA_DIR/lib64"
CUDA_LIBRARY_PATH_VALUE=""
LIBCUDA_RUNTIME_DIR=""   # a dir to put on LD_LIBRARY_PATH on machines without a driver

ldconfig_cmd="$(command -v ldconfig || echo /sbin/ldconfig)"
ldcache="$("$ldconfig_cmd" -p 2>/dev/null || true)"
# Path of a system library named exactly $1 (x86-64) from the loader cache, if any.
system_lib() {
    awk -v name="$1" '$1 == name && /x86-64/ { print $NF; exit }' <<<"$ldcache"
}

# Points $LIBCUDA_LIB/libcuda.so (and libcuda.so.1) at $1; pass -r for a relative link (a target
# inside .cache, so that the folder can move).
link_libcuda() {
    local rel=()
    if [[ "$1" == -r ]]; then rel=(-r); shift; fi
    mkdir -p "$LIBCUDA_LIB"
    ln -sfn "${rel[@]}" "$1" "$LIBCUDA_LIB/libcuda.so"
    ln -sfn "${rel[@]}" "$1" "$LIBCUDA_LIB/libcuda.so.1"
}

if [[ -e /usr/local/cuda/lib64/libcuda.so || -e /usr/local/cuda/lib64/stubs/libcuda.so ]]; then
    CUDA_LIBRARY_PATH_VALUE="$(cd /usr/local/cuda && pwd -P)"
    say "libcuda: CUDA toolkit at $CUDA_LIBRARY_PATH_VALUE"
elif sys="$(system_lib libcuda.so)"; [[ -n "$sys" && -e "$sys" ]]; then
    # A system libcuda.so the linker would find anyway; find_cuda_helper still wants a lib64 dir.
    link_libcuda "$sys"
    CUDA_LIBRARY_PATH_VALUE="$LIBCUDA_DIR"
    say "libcuda: system $sys"
elif sys="$(system_lib libcuda.so.1)"; sys="${sys:-/usr/local/nvidia/lib64/libcuda.so.1}"; [[ -e "$sys" ]]; then
    # A driver without the unversioned development link: link against the driver's own library.
    link_libcuda "$sys"
    CUDA_LIBRARY_PATH_VALUE="$LIBCUDA_DIR"
    say "libcuda: driver library $sys"
else
    CUDA_LIBRARY_PATH_VALUE="$LIBCUDA_DIR"
    LIBCUDA_RUNTIME_DIR="$LIBCUDA_LIB"
    if [[ -e "$LIBCUDA_LIB/libcuda.so" && -e "$LIBCUDA_LIB/libcuda.so.1" \
          && "$(readlink -f "$LIBCUDA_LIB/libcuda.so")" == "$LIBCUDA_DIR/root/"* ]]; then
        say "libcuda: Debian libcuda1 already in $LIBCUDA_DIR"
    else
        command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "no CUDA and no apt-get/dpkg"
        APT_DIR="$CACHE/apt"
        mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/debs"
        echo "deb http://deb.debian.org/debian bookworm non-free" >"$APT_DIR/sources.list"
        apt_opts=(
            -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
            -o "Dir::Etc::sourceparts=-"
            -o "Dir::State::Lists=$APT_DIR/lists"
            -o "Dir::Cache=$APT_DIR/cache"
            -o "APT::Sandbox::User=root"
            -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
            -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
            -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
            -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
            -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
        )
        apt-get -qq "${apt_opts[@]}" update >/dev/null
        rm -f "$APT_DIR/debs/"*.deb
        (cd "$APT_DIR/debs" && apt-get -qq "${apt_opts[@]}" download libcuda1 >/dev/null)
        debs=("$APT_DIR/debs/"libcuda1_*.deb)
        deb="${debs[0]}"
        [[ -f "$deb" ]] || die "apt-get download libcuda1 produced no .deb"
        tmp_root="$LIBCUDA_DIR/root.tmp.$$"
        rm -rf "$tmp_root"
        mkdir -p "$tmp_root"
        dpkg -x "$deb" "$tmp_root"
        rm -rf "$LIBCUDA_DIR/root"
        mv "$tmp_root" "$LIBCUDA_DIR/root"
        # The real file is libcuda.so.<driver version>; libcuda.so.1 is a symlink to it.
        real="$(find "$LIBCUDA_DIR/root/usr/lib/x86_64-linux-gnu" -name 'libcuda.so.*.*' -type f | sort | head -n1)"
        [[ -n "$real" ]] || die "no libcuda.so.<version> in $deb"
        link_libcuda -r "$real"
        say "libcuda: extracted $(basename "$deb") into $LIBCUDA_DIR (-> ${real#"$LIBCUDA_DIR/"})"
    fi
fi

# ---------------------------------------------------------------------------------------------
# c. ptxas from PyPI (nvidia-cuda-nvcc-cu12)
# ---------------------------------------------------------------------------------------------
NVCC_DIR="$CACHE/nvcc"
NVCC_PIN="nvidia-cuda-nvcc-cu12==12.9.86"
PTXAS_PATH="$NVCC_DIR/nvidia/cuda_nvcc/bin/ptxas"
if [[ -x "$PTXAS_PATH" ]]; then
    say "ptxas present: $PTXAS_PATH"
else
    tmp_nvcc="$CACHE/nvcc.tmp.$$"
    rm -rf "$tmp_nvcc"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$tmp_nvcc" "$NVCC_PIN"
    [[ -f "$tmp_nvcc/nvidia/cuda_nvcc/bin/ptxas" ]] || die "$NVCC_PIN has no nvidia/cuda_nvcc/bin/ptxas"
    chmod +x "$tmp_nvcc/nvidia/cuda_nvcc/bin/"*
    rm -rf "$NVCC_DIR"
    mv "$tmp_nvcc" "$NVCC_DIR"
    say "ptxas installed: $PTXAS_PATH ($("$PTXAS_PATH" --version | tail -n1))"
fi

# ---------------------------------------------------------------------------------------------
# d. .cache/env.sh
# ---------------------------------------------------------------------------------------------
ENV_FILE="$CACHE/env.sh"
tmp_env="$ENV_FILE.tmp.$$"
{
    echo "# Written by scripts/setup.sh; source it (bash). Do not edit: setup.sh rewrites it."
    printf 'export CUDA_LIBRARY_PATH=%q\n' "$CUDA_LIBRARY_PATH_VALUE"
    printf 'export PTXAS=%q\n' "$PTXAS_PATH"
    if [[ -n "$LIBCUDA_RUNTIME_DIR" ]]; then
        # Decided when sourced, not when written, in case .cache travels to a GPU machine: the
        # Debian copy must never shadow a real driver's libcuda.so.1.
        cat <<EOF
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /usr/local/nvidia/lib64/libcuda.so.1 ]; then
    case ":\${LD_LIBRARY_PATH:-}:" in
        *":$LIBCUDA_RUNTIME_DIR:"*) ;;
        *) export LD_LIBRARY_PATH="$LIBCUDA_RUNTIME_DIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" ;;
    esac
fi
EOF
    fi
} >"$tmp_env"
if cmp -s "$tmp_env" "$ENV_FILE"; then
    rm -f "$tmp_env"
    say "env: $ENV_FILE unchanged"
else
    mv "$tmp_env" "$ENV_FILE"
    say "env: wrote $ENV_FILE"
fi

# ---------------------------------------------------------------------------------------------
# e. Python virtual environment (maturin, pytest)
# ---------------------------------------------------------------------------------------------
VENV="$CACHE/venv"
PY_PINS=("maturin==1.16.0" "pytest==9.2.0")
if [[ -x "$VENV/bin/maturin" && -x "$VENV/bin/pytest" ]]; then
    say "python venv present: $VENV"
else
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PINS[@]}"
    say "python venv: $VENV (${PY_PINS[*]})"
fi

END_NS=$(date +%s%N)
say "done in $(( (END_NS - START_NS) / 1000000 )) ms (source $ENV_FILE to use it)"
