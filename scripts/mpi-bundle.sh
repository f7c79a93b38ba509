#!/usr/bin/env bash
# Copies the installed Debian OpenMPI 4.1.4 (openmpi-bin, its libraries, PMIx, hwloc, libevent,
# libfabric, UCX) into DIR, a self-contained folder for another Linux x86_64 machine of the
# same glibc era that has no MPI packages (e.g. a GPU node). The packages' files keep their
# layout (DIR/usr/bin/mpirun, DIR/usr/lib/x86_64-linux-gnu/..., DIR/etc/openmpi); the shared
# libraries they need beyond glibc, libgcc_s and libstdc++ are copied next to them. Writes
# DIR/env.sh, which points PATH, LD_LIBRARY_PATH and the OpenMPI/PMIx/hwloc install paths at
# the folder wherever it lies, and prints the folder's size.
#
# Usage: scripts/mpi-bundle.sh DIR
#   then, on the target (from bash): . DIR/env.sh; mpirun -np 3 ./prog   (prog uses libmpi.so.40)
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir="$1"
# libevent-openssl is left out: nothing in OpenMPI uses it, and it would bring libssl along.
pkgs=(openmpi-bin libopenmpi3 openmpi-common libpmix2 libhwloc15 libhwloc-plugins
      libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-pthreads-2.1-7
      libfabric1 libucx0)
lib=usr/lib/x86_64-linux-gnu
# glibc's own libraries, the loader, and libraries any machine with Python has: not copied.
system='^(linux-vdso|ld-linux-x86-64|libc|libm|libpthread|libdl|librt|libutil|libresolv|libgcc_s|libstdc\+\+)\.so'

for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
        || { echo "error: package $p is not installed (apt-get install $p)" >&2; exit 1; }
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# 1. The packages' files, minus docs and the hwloc plugins for OpenGL, OpenCL and libxml2
#    (hwloc does without them; they would pull in X11, an OpenCL loader and ICU).
for p in "${pkgs[@]}"; do dpkg -L "$p"; done | sort -u \
    | grep -Ev '^/usr/share/(doc|man|lintian)/|/hwloc/hwloc_(gl|opencl|xml_libxml)\.so$' \
    | sed -n 's|^/\(.\)|\1|p' | tar -C / --no-recursion -cf - -T - | tar -C "$dir" -xf -
# mpirun and mpiexec are Debian alternatives (mpirun -> mpirun.openmpi -> orterun).
ln -sfn orterun "$dir/usr/bin/mpirun"
ln -sfn orterun "$dir/usr/bin/mpiexec"
ln -sfn usr/bin "$dir/bin"

# 2. The other shared libraries that the copied binaries, libraries and plugins need, under
#    their sonames. deps prints "soname path" for each library ldd resolves (ldd lists the
#    whole transitive closure) with the bundle's folders searched first, as env.sh does (UCX's
#    modules find each other in ucx/).
deps() {
    find "$dir/usr" -type f | while read -r f; do
        if [ "$(head -c 4 "$f")" = $'\x7fELF' ]; then
            LD_LIBRARY_PATH="$dir/$lib:$dir/$lib/ucx" ldd "$f" 2>/dev/null || true
        fi
    done | awk '$2 == "=>" {print $1, $3}' | sort -u | grep -Ev "$system" || true
}
deps | while read -r name path; do
    case "$path" in "$dir"/*) ;; /*) cp -L "$path" "$dir/$lib/$name" ;; esac
done
if missing=$(deps | grep -v " $dir/"); then
    echo "warning: libraries not found in $dir:" $missing >&2
fi

# 3. The environment. OPAL_PREFIX relocates OpenMPI except its sysconfdir (/etc/openmpi).
#    Debian's PMIx has absolute libdir, datadir (help texts) and sysconfdir, and its
#    pmix-mca-params.conf names the system plugin folder, so each is set on its own.
cat > "$dir/env.sh" <<'EOF'
# Source from bash: uses the OpenMPI bundle in this file's folder (wherever it was moved).
_mpi_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_mpi_lib="$_mpi_root/usr/lib/x86_64-linux-gnu"
export PATH="$_mpi_root/usr/bin${PATH:+:$PATH}"
export LD_LIBRARY_PATH="$_mpi_lib:$_mpi_lib/ucx${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPAL_PREFIX="$_mpi_root/usr"
export OPAL_SYSCONFDIR="$_mpi_root/etc/openmpi"
export PMIX_LIBDIR="$_mpi_lib/pmix2/lib"
export PMIX_DATADIR="$_mpi_lib/pmix2/share"
export PMIX_SYSCONFDIR="$_mpi_lib/pmix2/share"
export PMIX_MCA_mca_base_component_path="$_mpi_lib/pmix2/lib/pmix"
export HWLOC_PLUGINS_PATH="$_mpi_lib/hwloc"
unset _mpi_root _mpi_lib
EOF

du -sh "$dir"
