# Sourced by the scripts/bench-* benchmarks after they set `repo`: from ISA (native, the
# default, or avx2) sets `build`, the cargo flags, and `target`, the target folder. ISA=avx2
# builds without the AVX-512 kernels (`--no-default-features`, in target/avx2): what an
# AVX2 machine runs, measurable on an AVX-512 one (ISA=native uses AVX-512 where the machine
# has it).
case "${ISA:=native}" in
    native) build=() target="$repo/target" ;;
    avx2) build=(--no-default-features) target="$repo/target/avx2" ;;
    *) echo "$(basename "$0"): ISA must be native or avx2, not '$ISA'" >&2; exit 2 ;;
esac
