// The persistent path: ONE launch runs the whole recurrence.
//
// Each block owns `rows` batch rows for every time step (rows are independent, so blocks never
// synchronise with each other) and has rows * units threads: thread (r, j) owns unit j of row r.
// recurrent_kernel is staged in shared memory once, with rows padded to 4*units + 1 elements so
// that the backward pass's row-wise reads do not collide in one bank.
//
// Layouts (batch-major, as the NumPy reference): zx [batch, time, 4*units] = x @ kernel + bias;
// h, c [batch, time + 1, units] with the initial state at index 0; gates [batch, time, 4*units]
// (activated i, f, g, o); dz [batch, time, 4*units] (pre-activation gradients).
#include "lstm_common.cuh"

namespace fastlstm {

enum { MAX_THREADS = 1024, STAGED = 4 };  // enumerators, not variables: no device global under NVRTC

// A thread's place in its block, and the block's recurrent_kernel staged in shared memory.
template <typename T>
struct Tile {
    int ld;          // the padded row length of the staged recurrent_kernel
    T* recurrent;    // [units][ld] in shared memory
    T* buffers;      // the shared memory after it
    int r, j, b;     // row in the block, unit, batch row
    bool active;     // b < batch: the last block may hold fewer rows; its idle threads still reach every barrier
};

template <typename T>
__device__ __forceinline__ Tile<T> stage(unsigned char* shared, const T* recurrent_kernel, int batch, int units,
                                         int rows) {
    Tile<T> tile;
    const int gates = 4 * units;
    tile.ld = gates + 1;
    tile.recurrent = reinterpret_cast<T*>(shared);
    tile.buffers = tile.recurrent + units * tile.ld;
    tile.r = threadIdx.x / units;
    tile.j = threadIdx.x % units;
    tile.b = blockIdx.x * rows + tile.r;
    tile.active = tile.b < batch;
    // STAGED loads in flight per thread before their stores, each a coalesced pass of the block
    // over recurrent_kernel: a load at a time would wait out the memory's latency per element.
    const int elements = units * gates, stride = blockDim.x;
    int i = threadIdx.x;
    for (; i + (STAGED - 1) * stride < elements; i += STAGED * stride) {
        T loaded[STAGED];
#pragma unroll
        for (int s = 0; s < STAGED; ++s) loaded[s] = recurrent_kernel[i + s * stride];
#pragma unroll
        for (int s = 0; s < STAGED; ++s) {
            const int e = i + s * stride;
            tile.recurrent[(e / gates) * tile.ld + e % gates] = loaded[s];
        }
    }
    for (; i < elements; i += stride) tile.recurrent[(i / gates) * tile.ld + i % gates] = recurrent_kernel[i];
    return tile;
}

// Forward. Shared memory: recurrent_kernel [units][4*units + 1], then h [2][rows][units]
// (double-buffered, so one barrier per step suffices: step t reads buffer t % 2 and writes the
// other, and a thread can only overwrite a buffer after every thread passed the barrier that
// follows the reads of it).
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS)
persistent_forward(const T* __restrict__ zx, const T* __restrict__ recurrent_kernel, T* __restrict__ h,
                   T* __restrict__ c, T* __restrict__ gates, int batch, int time, int units, int rows,
                   int activation, int recurrent_activation) {
    FASTLSTM_DYNAMIC_SHARED(shared);
    const auto [ld, r_s, h_s, r, j, b, active] = stage(shared, recurrent_kernel, batch, units, rows);
    T c_t = active ? c[(size_t)b * (time + 1) * units + j] : T(0);
    h_s[r * units + j] = active ? h[(size_t)b * (time + 1) * units + j] : T(0);
    __syncthreads();

    for (int t = 0; t < time; ++t) {
        const T* h_prev = h_s + (t & 1) * rows * units + r * units;
        T z[4] = {T(0), T(0), T(0), T(0)};
        if (active) {
            const T* zx_t = zx + ((size_t)b * time + t) * 4 * units;
            for (int g = 0; g < 4; ++g) z[g] = zx_t[g * units + j];
        }
        for (int k = 0; k < units; ++k) {
            const T hk = h_prev[k];
            const T* r_k = r_s + k * ld + j;
            for (int g = 0; g < 4; ++g) z[g] += hk * r_k[g * units];
        }
        const T i = activate(recurrent_activation, z[0]), f = activate(recurrent_activation, z[1]);
        const T g = activate(activation, z[2]), o = activate(recurrent_activation, z[3]);
        c_t = f * c_t + i * g;
        const T h_t = o * activate(activation, c_t);
        h_s[((t + 1) & 1) * rows * units + r * units + j] = h_t;
        if (active) {
            const size_t state = ((size_t)b * (time + 1) + t + 1) * units + j;
            h[state] = h_t;
            c[state] = c_t;
            T* gates_t = gates + ((size_t)b * time + t) * 4 * units + j;
            gates_t[0] = i;
            gates_t[units] = f;
            gates_t[2 * units] = g;
            gates_t[3 * units] = o;
        }
        __syncthreads();
    }
}

// Backward, in reverse time. dh and dc of thread (r, j) stay in registers; dz of a row goes
// through shared memory [2][rows][4*units] (double-buffered as h in the forward), because
// dh_{t-1}[j] = sum_m dz_t[m] * recurrent_kernel[j][m] needs the whole row.
// dy: [batch, time, units] when dy_per_step, else [batch, 1, units] (the last output's gradient);
// dy, dh_final and dc_final may be null (zero). Writes dz, and dh0, dc0 [batch, units].
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS)
persistent_backward(const T* __restrict__ recurrent_kernel, const T* __restrict__ c, const T* __restrict__ gates,
                    const T* __restrict__ dy, int dy_per_step, const T* __restrict__ dh_final,
                    const T* __restrict__ dc_final, T* __restrict__ dz, T* __restrict__ dh0, T* __restrict__ dc0,
                    int batch, int time, int units, int rows, int activation, int recurrent_activation) {
    FASTLSTM_DYNAMIC_SHARED(shared);
    const auto [ld, r_s, dz_s, r, j, b, active] = stage(shared, recurrent_kernel, batch, units, rows);
    const size_t row_state = (size_t)b * units + j;
    T dh = T(0), dc = T(0);
    if (active) {
        if (dh_final) dh = dh_final[row_state];
        if (dc_final) dc = dc_final[row_state];
        if (dy && !dy_per_step) dh += dy[row_state];
    }
    __syncthreads();

    for (int t = time - 1; t >= 0; --t) {
        T* dz_row = dz_s + (t & 1) * rows * 4 * units + r * 4 * units;
        if (active) {
            if (dy && dy_per_step) dh += dy[((size_t)b * time + t) * units + j];
            const T* gates_t = gates + ((size_t)b * time + t) * 4 * units + j;
            const T i = gates_t[0], f = gates_t[units], g = gates_t[2 * units], o = gates_t[3 * units];
            const T c_prev = c[((size_t)b * (time + 1) + t) * units + j];
            const T act_c = activate(activation, c[((size_t)b * (time + 1) + t + 1) * units + j]);
            dc += dh * o * activation_grad(activation, act_c);
            const T d[4] = {dc * g * activation_grad(recurrent_activation, i),
                            dc * c_prev * activation_grad(recurrent_activation, f),
                            dc * i * activation_grad(activation, g),
                            dh * act_c * activation_grad(recurrent_activation, o)};
            T* dz_t = dz + ((size_t)b * time + t) * 4 * units + j;
            for (int q = 0; q < 4; ++q) {
                dz_row[q * units + j] = d[q];
                dz_t[q * units] = d[q];
            }
            dc *= f;
        } else {
            for (int q = 0; q < 4; ++q) dz_row[q * units + j] = T(0);
        }
        __syncthreads();
        // One independent chain per gate, summed at the end: a single accumulator would chain all
        // 4 * units multiply-adds, each waiting for the one before.
        const T* r_j = r_s + j * ld;
        T partial[4] = {T(0), T(0), T(0), T(0)};
        for (int m = 0; m < units; ++m)
            for (int q = 0; q < 4; ++q) partial[q] += dz_row[q * units + m] * r_j[q * units + m];
        dh = (partial[0] + partial[1]) + (partial[2] + partial[3]);
    }
    if (active) {
        dh0[row_state] = dh;
        dc0[row_state] = dc;
    }
}

}  // namespace fastlstm
