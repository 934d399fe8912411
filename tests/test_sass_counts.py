"""The SASS loop counts of the compile gate's report (tests/support/sass.py), checked on small
kernels whose inner loop has a known shape, built with nvcc for sm_90 as the gate builds the
LSTM kernels. The expected numbers are those of the SASS ptxas makes of them, read by hand."""
import subprocess

import pytest

from support import sass

SOURCE = r"""
// Four independent multiply-adds on two shared loads per iteration, inside an outer loop.
template <typename T>
__global__ void four_fmas(T* __restrict__ out, T c, int steps, int n) {
    extern __shared__ unsigned char raw[];
    T* s = reinterpret_cast<T*>(raw);
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int t = 0; t < steps; ++t) {
#pragma unroll 1
        for (int k = 0; k < n; ++k) {
            const T x = s[k], y = s[k + threadIdx.x + 1024];
            a0 = fma(x, y, a0);
            a1 = fma(x, x, a1);
            a2 = fma(y, y, a2);
            a3 = fma(y, c, a3);
        }
        __syncthreads();
    }
    out[threadIdx.x] = a0 + a1 + a2 + a3;
}
template __global__ void four_fmas<float>(float*, float, int, int);
template __global__ void four_fmas<double>(double*, double, int, int);

// Staging with four global loads issued before the first is stored.
extern "C" __global__ void four_in_flight(const float* __restrict__ in, int n) {
    extern __shared__ float s[];
    const int stride = blockDim.x;
#pragma unroll 1
    for (int i = threadIdx.x; i < n; i += 4 * stride) {
        const float v0 = in[i], v1 = in[i + stride], v2 = in[i + 2 * stride], v3 = in[i + 3 * stride];
        s[i] = v0;
        s[i + stride] = v1;
        s[i + 2 * stride] = v2;
        s[i + 3 * stride] = v3;
    }
}

// A gather: the second load's address is the first load's result, so one is in flight at a time.
extern "C" __global__ void one_in_flight(const float* __restrict__ in, const int* __restrict__ index, int n) {
    extern __shared__ float s[];
#pragma unroll 1
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = in[index[i]];
}
"""


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    """{kernel name: [Loop]} of SOURCE built for sm_90."""
    directory = tmp_path_factory.mktemp("sass")
    (directory / "loops.cu").write_text(SOURCE)
    result = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-o", str(directory / "loops.cubin"),
                             str(directory / "loops.cu")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return sass.cubin_loops(directory / "loops.cubin")


@pytest.mark.parametrize("mangled, opcode, width", [("_Z9four_fmasIfEvPT_S0_ii", "FFMA", 32),
                                                    ("_Z9four_fmasIdEvPT_S0_ii", "DFMA", 64)])
def test_the_inner_loop_of_a_nest_counts_its_multiply_adds_and_shared_loads(loops, mangled, opcode, width):
    # Only the k loop: the t loop holds it, and the branch-to-itself after EXIT is no loop.
    [loop] = loops[mangled]
    assert loop.fmas == {opcode: 4}
    assert loop.shared_loads == {width: 2}
    assert loop.global_loads == 0
    assert loop.instructions == 11  # 2 LDS, 4 FMAs, 3 counter and address updates, a compare, the branch
    assert loop.shared_loads_per_fma() == 0.5
    assert loop.instructions_per_fma() == 2.75
    assert not loop.staging


@pytest.mark.parametrize("kernel, loads, in_flight", [("four_in_flight", 4, 4), ("one_in_flight", 2, 1)])
def test_a_staging_loop_counts_the_loads_issued_before_the_first_is_used(loops, kernel, loads, in_flight):
    [loop] = loops[kernel]
    assert loop.staging
    assert loop.global_loads == loads
    assert loop.loads_in_flight == in_flight
    assert loop.fmas == {} and loop.shared_loads == {}


def test_a_constant_move_written_as_a_half_multiply_add_is_no_multiply_add():
    listing = """.text.k:
.L_x_0:
        /*0000*/                   HFMA2.MMA R25, -RZ, RZ, 0, 0 ;
        /*0010*/                   FFMA R2, R3, R4, R2 ;
        /*0020*/                   HFMA2 R6, R7, R8, R6 ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
"""
    [loop] = sass.inner_loops(sass.parse(listing)["k"])
    assert (loop.start, loop.end, loop.instructions) == (0, 0x30, 4)
    assert loop.fmas == {"FFMA": 1, "HFMA2": 1}


def test_a_listing_without_a_backward_branch_has_no_loop():
    listing = """.text.k:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/               @P0 BRA `(.L_x_1) ;
        /*0020*/                   FFMA R2, R3, R4, R2 ;
.L_x_1:
        /*0030*/                   EXIT ;
.L_x_2:
        /*0040*/                   BRA `(.L_x_2);
"""
    code = sass.parse(listing)["k"]
    assert [i.target for i in code] == [None, 0x30, None, None, 0x40]
    assert sass.inner_loops(code) == []
