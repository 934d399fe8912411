// The cooperative path: ONE launch runs the whole recurrence where recurrent_kernel is too large
// for one block's shared memory, or its units too many for one block's threads.
//
// The units are split into slices and the batch rows into tiles, a block per (slice, tile): block
// (s, r) computes units s * slice .. s * slice + slice - 1 of rows r * rows .. r * rows + rows - 1,
// and keeps its slice's columns of recurrent_kernel (forward) or its rows (backward) in shared
// memory for the whole sequence. A step needs every unit's h_{t-1} (forward) or every gate's dz_t
// (backward) of its rows, so the blocks exchange them through global memory, double-buffered,
// with one grid-wide barrier per step; the plan launches at most one block per multiprocessor,
// and the caller launches cooperatively, so that every block is resident and the barrier cannot
// wait for a block that never runs. Thread (q, jl) of a block's groups x slice computes unit
// s * slice + jl of its tile's rows q * ROWS .. q * ROWS + ROWS - 1, then every groups * ROWS rows
// after them: each weight it reads from shared memory serves ROWS rows, and where a slice is 32
// units a warp's threads read the same row's h or dz, one value for all. The rows a block's
// threads take at once, a pass, first have their h_{t-1} (forward) or dz_t (backward) of every unit
// staged in shared memory: coalesced, and off the multiply-adds' critical path.
//
// Layouts and arguments as in lstm_persistent.cu; in addition exchange, [2][batch][units] forward
// and [2][batch][4*units] backward, and barrier, two zeroed unsigned words. The state of a row
// (c forward; dh and dc backward, in dh0 and dc0) is read and written only by the thread that owns
// the row's unit.
#include "lstm_common.cuh"

namespace fastlstm {
namespace cooperative {

// MAX_THREADS matches COOPERATIVE_THREADS in fastlstm/backends/plan.py, ROWS its ROWS_PER_THREAD;
// STAGED loads of recurrent_kernel in flight per thread while a block stages its slice.
enum { MAX_THREADS = 512, ROWS = 4, STAGED = 8 };

// How often a block looks for the barrier's release before it gives up: seconds of polls at tens
// of nanoseconds each, where a step takes at most milliseconds (the emulation's test of a barrier
// that is never released defines fewer).
#ifndef FASTLSTM_GRID_SYNC_POLLS
#define FASTLSTM_GRID_SYNC_POLLS (1u << 26)
#endif

// Waits until every thread of the grid has called it as often as this one: thread 0 of each block
// counts its block in barrier[0]; the last to arrive resets the count and moves barrier[1], the
// generation, on, which the others wait for. Atomics and fences order the blocks' writes before
// the barrier with their reads after it; the generation is read before the block counts itself,
// so that the last arrival cannot move it on unseen. A block that never arrives (a launch that
// was not cooperative, say) would hold the others for ever: after FASTLSTM_GRID_SYNC_POLLS looks
// they trap, and the launch fails with an error rather than hanging.
__device__ __forceinline__ void grid_sync(unsigned* barrier) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned generation = atomicAdd(barrier + 1, 0u);
        __threadfence();
        if (atomicAdd(barrier, 1u) == gridDim.x - 1) {
            atomicExch(barrier, 0u);
            __threadfence();
            atomicAdd(barrier + 1, 1u);
        } else {
            for (unsigned polls = 0; atomicAdd(barrier + 1, 0u) == generation; ++polls) {
                if (polls == FASTLSTM_GRID_SYNC_POLLS) __trap();
                __nanosleep(32);
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// A 16-byte vector read through L2 alone, not the SM's L1: another block wrote it this step.
__device__ __forceinline__ Vector<float> load_global(const Vector<float>* address) {
    const float4 v = __ldcg(reinterpret_cast<const float4*>(address));
    return {{v.x, v.y, v.z, v.w}};
}

__device__ __forceinline__ Vector<double> load_global(const Vector<double>* address) {
    const double2 v = __ldcg(reinterpret_cast<const double2*>(address));
    return {{v.x, v.y}};
}

// A thread's unit and rows.
struct Place {
    int unit_base;  // the block's first unit, its slice's
    int jl;         // the thread's unit within the slice
    int j;          // its unit
    bool active;    // whether unit j exists (the last slice may end past units)
    int start;      // the block's first row, its tile's
    int end;        // the end of the tile
    int offset;     // the thread's first row in a pass, q * ROWS
    int stride;     // the rows of a pass, groups * ROWS
};

__device__ __forceinline__ Place place(int batch, int units, int slice, int rows) {
    const int slices = (units + slice - 1) / slice;
    Place p;
    p.unit_base = blockIdx.x % slices * slice;
    p.jl = threadIdx.x % slice;
    p.j = p.unit_base + p.jl;
    p.active = p.j < units;
    p.start = blockIdx.x / slices * rows;
    p.end = p.start + rows < batch ? p.start + rows : batch;
    p.offset = threadIdx.x / slice * ROWS;
    p.stride = blockDim.x / slice * ROWS;
    return p;
}

// f(b) for each row b of the tile that the thread owns (none for a unit past the last).
template <typename F>
__device__ __forceinline__ void for_own_rows(const Place& p, F f) {
    if (!p.active) return;
    for (int base = p.start + p.offset; base < p.end; base += p.stride)
        for (int b = base; b < base + ROWS && b < p.end; ++b) f(b);
}

// Copies the pass's rows (from row `pass`, each `width` elements) of `buffer`, which other blocks
// wrote this step, into shared memory: in 16-byte vectors where the addresses and the count allow
// (dz's rows of 4 * units always do), else an element at a time; then waits for the block.
template <typename T>
__device__ __forceinline__ void stage_pass(T* shared_rows, const T* buffer, int width, int pass, const Place& p) {
    constexpr int LANES = Vector<T>::LANES;
    const int count = ((p.end - pass < p.stride) ? p.end - pass : p.stride) * width;
    const T* rows = buffer + (size_t)pass * width;
    if (count % LANES == 0 && reinterpret_cast<size_t>(rows) % VECTOR_BYTES == 0) {
        Vector<T>* to = reinterpret_cast<Vector<T>*>(shared_rows);
        const Vector<T>* from = reinterpret_cast<const Vector<T>*>(rows);
        for (int v = threadIdx.x; v < count / LANES; v += blockDim.x) to[v] = load_global(from + v);
    } else {
        for (int e = threadIdx.x; e < count; e += blockDim.x) shared_rows[e] = __ldcg(rows + e);
    }
    __syncthreads();
}

// Fills staged[row][slice] with weight(row, jl) for rows 0 .. rows - 1: thread (q, jl) of the
// block's groups x slice takes rows q, q + groups, ..., STAGED loads in flight before their stores
// (a load at a time would wait out the memory's latency per element), no division per element.
template <typename T, typename Weight>
__device__ __forceinline__ void stage_slice(T* staged, int rows, int slice, Weight weight) {
    const int groups = blockDim.x / slice, jl = threadIdx.x % slice;
    int row = threadIdx.x / slice;
    for (; row + (STAGED - 1) * groups < rows; row += STAGED * groups) {
        T loaded[STAGED];
#pragma unroll
        for (int s = 0; s < STAGED; ++s) loaded[s] = weight(row + s * groups, jl);
#pragma unroll
        for (int s = 0; s < STAGED; ++s) staged[(row + s * groups) * slice + jl] = loaded[s];
    }
    for (; row < rows; row += groups) staged[row * slice + jl] = weight(row, jl);
}

// Forward. Shared memory: the slice's columns of recurrent_kernel as [units][4][slice], so that
// per k a thread reads its unit's four gate weights, each serving ROWS rows; then a pass's h_{t-1}
// [stride][units]. exchange[t % 2] holds h_{t-1} of every row and unit at step t. The first tile's
// blocks copy their columns of recurrent_kernel into saved_recurrent_kernel from shared memory.
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS / (sizeof(T) / 4), 1)
forward(const T* __restrict__ zx, const T* __restrict__ bias, const T* __restrict__ recurrent_kernel,
        T* __restrict__ saved_recurrent_kernel, const T* __restrict__ h0, const T* __restrict__ c0,
        T* __restrict__ inputs, T* __restrict__ c, T* __restrict__ gates, T* __restrict__ outputs,
        T* __restrict__ h_final, T* __restrict__ c_final, T* exchange, unsigned* barrier, int batch, int time,
        int input_dim, int units, int slice, int rows, int go_backwards, int outputs_per_step, int activation,
        int recurrent_activation) {
    FASTLSTM_DYNAMIC_SHARED(shared);
    T* w_s = reinterpret_cast<T*>(shared);
    T* h_s = w_s + units * 4 * slice;
    const Place p = place(batch, units, slice, rows);
    // Row 4k + g of the staged slice: gate g's weights from h_k, recurrent_kernel[k][g * units + j].
    const auto column = [&](int row, int jl) {
        return (size_t)(row >> 2) * 4 * units + (row & 3) * units + p.unit_base + jl;
    };
    stage_slice(w_s, 4 * units, slice,
                [&](int row, int jl) { return p.unit_base + jl < units ? recurrent_kernel[column(row, jl)] : T(0); });
    if ((int)blockIdx.x < (units + slice - 1) / slice) {  // the first tile's blocks, a slice each
        __syncthreads();
        for (int row = threadIdx.x / slice; p.active && row < 4 * units; row += blockDim.x / slice)
            saved_recurrent_kernel[column(row, p.jl)] = w_s[row * slice + p.jl];
    }
    const int width = input_width(input_dim, units, bias);
    T bias_j[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) bias_j[g] = bias && p.active ? bias[g * units + p.j] : T(0);
    for_own_rows(p, [&](int b) {
        const size_t row_state = (size_t)b * units + p.j;
        exchange[row_state] = h0[row_state];
        c[(size_t)b * (time + 1) * units + p.j] = c0[row_state];
        inputs[((size_t)b * time + caller_step(0, time, go_backwards)) * width + input_dim + p.j] = h0[row_state];
        if (bias) write_ones(inputs, b, time, width, units, p.j);
    });
    grid_sync(barrier);

    for (int t = 0; t < time; ++t) {
        const T* h_prev = exchange + (t & 1) * (size_t)batch * units;
        T* h_next = exchange + ((t + 1) & 1) * (size_t)batch * units;
        const int step = caller_step(t, time, go_backwards);
        for (int pass = p.start; pass < p.end; pass += p.stride) {
            stage_pass(h_s, h_prev, units, pass, p);
            const int base = pass + p.offset;
            if (base < p.end) {
                // Rows past the tile compute on its last row's h, and write nothing.
                int row[ROWS];
                T z[ROWS][4];
#pragma unroll
                for (int rr = 0; rr < ROWS; ++rr) {
                    row[rr] = base + rr < p.end ? base + rr : p.end - 1;
                    const T* zx_step = zx + ((size_t)row[rr] * time + step) * 4 * units + (p.active ? p.j : 0);
#pragma unroll
                    for (int g = 0; g < 4; ++g) z[rr][g] = zx_step[g * units] + bias_j[g];  // bias first, as x @ W + b
                }
                for (int k = 0; k < units; ++k) {
                    const T* w_k = w_s + k * 4 * slice + p.jl;
                    const T w[4] = {w_k[0], w_k[slice], w_k[2 * slice], w_k[3 * slice]};
#pragma unroll
                    for (int rr = 0; rr < ROWS; ++rr) {
                        const T hk = h_s[(row[rr] - pass) * units + k];
#pragma unroll
                        for (int g = 0; g < 4; ++g) z[rr][g] += hk * w[g];
                    }
                }
#pragma unroll
                for (int rr = 0; rr < ROWS; ++rr) {
                    if (!p.active || base + rr >= p.end) break;
                    const size_t b = base + rr;
                    const T i = activate(recurrent_activation, z[rr][0]), f = activate(recurrent_activation, z[rr][1]);
                    const T g = activate(activation, z[rr][2]), o = activate(recurrent_activation, z[rr][3]);
                    const size_t state = (b * (time + 1) + t) * units + p.j;
                    const T c_t = f * c[state] + i * g;
                    const T h_t = o * activate(activation, c_t);
                    c[state + units] = c_t;
                    h_next[b * units + p.j] = h_t;
                    if (t + 1 < time) {
                        inputs[(b * time + caller_step(t + 1, time, go_backwards)) * width + input_dim + p.j] = h_t;
                    } else {
                        h_final[b * units + p.j] = h_t;
                        c_final[b * units + p.j] = c_t;
                    }
                    if (outputs_per_step) outputs[(b * time + t) * units + p.j] = h_t;
                    else if (t + 1 == time) outputs[b * units + p.j] = h_t;
                    T* gates_t = gates + (b * time + t) * 4 * units + p.j;
                    gates_t[0] = i;
                    gates_t[units] = f;
                    gates_t[2 * units] = g;
                    gates_t[3 * units] = o;
                }
            }
            __syncthreads();  // every thread's reads of this pass's h before the next pass's
        }
        grid_sync(barrier);
    }
}

// Backward, in reverse time. Shared memory: the slice's rows of recurrent_kernel as
// [4*units][slice], so that the threads of a slice read one m's weights side by side, in distinct
// banks; then a pass's dz_t [stride][4*units]. Each step the thread's pointwise work writes dz of
// its unit's four gates into exchange[t % 2], and after the barrier it sums dh_{t-1} of its unit,
// ``dz_t @ recurrent_kernel[j]``, over vectors of the staged dz: one weight read serves ROWS rows,
// and each (row, lane) is an independent chain of multiply-adds, summed at the end. dh and dc of a
// row are carried in dh0 and dc0.
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS / (sizeof(T) / 4), 1)
backward(const T* __restrict__ recurrent_kernel, const T* __restrict__ c, const T* __restrict__ gates,
         const T* __restrict__ dy, int dy_per_step, const T* __restrict__ dh_final, const T* __restrict__ dc_final,
         T* __restrict__ dz, T* __restrict__ dh0, T* __restrict__ dc0, T* exchange, unsigned* barrier, int batch,
         int time, int units, int slice, int rows, int go_backwards, int activation, int recurrent_activation) {
    FASTLSTM_DYNAMIC_SHARED(shared);
    const int gate_columns = 4 * units;
    T* r_s = reinterpret_cast<T*>(shared);
    T* dz_s = r_s + gate_columns * slice;
    const Place p = place(batch, units, slice, rows);
    stage_slice(r_s, gate_columns, slice, [&](int m, int jl) {
        return p.unit_base + jl < units ? recurrent_kernel[(size_t)(p.unit_base + jl) * gate_columns + m] : T(0);
    });
    for_own_rows(p, [&](int b) {
        const size_t row_state = (size_t)b * units + p.j;
        T dh = dh_final ? dh_final[row_state] : T(0);
        if (dy && !dy_per_step) dh += dy[row_state];
        dh0[row_state] = dh;
        dc0[row_state] = dc_final ? dc_final[row_state] : T(0);
    });

    constexpr int LANES = Vector<T>::LANES;
    for (int t = time - 1; t >= 0; --t) {
        T* dz_all = exchange + (t & 1) * (size_t)batch * gate_columns;
        for_own_rows(p, [&](int b) {
            const size_t row_state = (size_t)b * units + p.j, step = (size_t)b * time + t;
            T dh = dh0[row_state];
            if (dy && dy_per_step) dh += dy[step * units + p.j];
            const T* gates_t = gates + step * gate_columns + p.j;
            const T i = gates_t[0], f = gates_t[units], g = gates_t[2 * units], o = gates_t[3 * units];
            const size_t state = (size_t)b * (time + 1) + t;  // c_{t-1}'s index in c, then c_t's
            const T c_prev = c[state * units + p.j];
            const T act_c = activate(activation, c[(state + 1) * units + p.j]);
            const T dc = dc0[row_state] + dh * o * activation_grad(activation, act_c);
            const T d[4] = {dc * g * activation_grad(recurrent_activation, i),
                            dc * c_prev * activation_grad(recurrent_activation, f),
                            dc * i * activation_grad(activation, g),
                            dh * act_c * activation_grad(recurrent_activation, o)};
            T* dz_t = dz + ((size_t)b * time + caller_step(t, time, go_backwards)) * gate_columns + p.j;
            T* dz_row = dz_all + (size_t)b * gate_columns + p.j;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                dz_t[q * units] = d[q];
                dz_row[q * units] = d[q];
            }
            dc0[row_state] = dc * f;
        });
        grid_sync(barrier);
        for (int pass = p.start; pass < p.end; pass += p.stride) {
            stage_pass(dz_s, dz_all, gate_columns, pass, p);
            const int base = pass + p.offset;
            if (base < p.end) {
                const Vector<T>* dz_v[ROWS];
#pragma unroll
                for (int rr = 0; rr < ROWS; ++rr)
                    dz_v[rr] = reinterpret_cast<const Vector<T>*>(
                        dz_s + (size_t)((base + rr < p.end ? base + rr : p.end - 1) - pass) * gate_columns);
                T partial[ROWS][LANES] = {};
                for (int v = 0; v < gate_columns / LANES; ++v) {
                    T w[LANES];
#pragma unroll
                    for (int l = 0; l < LANES; ++l) w[l] = r_s[(v * LANES + l) * slice + p.jl];
#pragma unroll
                    for (int rr = 0; rr < ROWS; ++rr) {
                        const Vector<T> d = dz_v[rr][v];
#pragma unroll
                        for (int l = 0; l < LANES; ++l) partial[rr][l] += d.lane[l] * w[l];
                    }
                }
#pragma unroll
                for (int rr = 0; rr < ROWS; ++rr) {
                    T sum = T(0);
#pragma unroll
                    for (int l = 0; l < LANES; ++l) sum += partial[rr][l];
                    if (p.active && base + rr < p.end) dh0[(size_t)(base + rr) * units + p.j] = sum;
                }
            }
            __syncthreads();  // every thread's reads of this pass's dz before the next pass's
        }
        // The next step writes the other buffer, and its barrier comes before this one is written again.
    }
}

}  // namespace cooperative
}  // namespace fastlstm
