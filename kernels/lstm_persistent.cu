// The persistent path: ONE launch runs the whole recurrence.
//
// Each block owns `rows` batch rows for every time step (rows are independent, so blocks never
// synchronise with each other). Its threads are register-blocked: thread (q, j) computes unit j of
// the ROWS rows q * ROWS .. q * ROWS + ROWS - 1 of the block, so each weight it reads from shared
// memory serves ROWS rows; a block has ceil(rows / ROWS) * units threads. recurrent_kernel is
// staged in shared memory once, its rows padded to fastlstm.backends.plan.recurrent_row_length:
// whole 16-byte vectors, an odd number of them, so that the backward pass reads each thread's own
// row a vector at a time with no two threads of a phase in one bank.
//
// One launch is the whole call's device work besides the GEMMs around it: the forward reads the
// initial state and bias itself and writes every array the call returns or saves.
//
// Layouts (batch-major, as the NumPy reference). In the caller's time order (see caller_step):
// zx [batch, time, 4*units] = x @ kernel, without bias; inputs [batch, time, input_width], the rows
// [x_t, h_{t-1}] (and a 1 with a bias) whose product with dz is the weight gradients, x filled by
// the caller and the rest by the forward; dz [batch, time, 4*units] (pre-activation gradients). In
// processing order: c [batch, time + 1, units] with c0 at index 0; gates [batch, time, 4*units]
// (activated i, f, g, o); outputs and dy [batch, time, units] when per step, else [batch, 1, units]
// (the last step's). bias [4*units], h0, c0, h_final, c_final, dh0, dc0 [batch, units].
#include "lstm_common.cuh"

namespace fastlstm {

// Enumerators, not variables: no device global under NVRTC. ROWS matches ROWS_PER_THREAD in
// fastlstm/backends/plan.py, and MAX_THREADS / (sizeof(T) / 4) its PERSISTENT_THREADS: a float64
// value takes two registers.
enum { MAX_THREADS = 512, ROWS = 4, STAGED = 8 };

// A thread's place in its block, and where the block's recurrent_kernel lies in shared memory.
template <typename T>
struct Tile {
    int ld;          // the padded row length of the staged recurrent_kernel (the backward's layout)
    T* recurrent;    // units * ld elements of shared memory
    T* buffers;      // the shared memory after them
    int padded_rows; // the block's rows rounded up to whole groups: the buffers' rows
    int first;       // the thread's first row in the block, q * ROWS
    int j;           // its unit
    int b;           // the batch row of its first row
    int count;       // how many of its ROWS rows exist (the last group and the last block may hold
                     // fewer); the others compute on zeros and still reach every barrier
};

template <typename T>
__device__ __forceinline__ Tile<T> place(unsigned char* shared, int batch, int units, int rows) {
    Tile<T> tile;
    const int lanes = Vector<T>::LANES, vectors = 4 * units / lanes + 1;
    tile.ld = (vectors + 1 - vectors % 2) * lanes;
    tile.recurrent = reinterpret_cast<T*>(shared);
    tile.buffers = tile.recurrent + units * tile.ld;
    tile.padded_rows = (rows + ROWS - 1) / ROWS * ROWS;
    tile.first = threadIdx.x / units * ROWS;
    tile.j = threadIdx.x % units;
    tile.b = blockIdx.x * rows + tile.first;
    const int left = rows - tile.first < batch - tile.b ? rows - tile.first : batch - tile.b;
    tile.count = left < 0 ? 0 : left < ROWS ? left : ROWS;
    return tile;
}

// Copies recurrent_kernel [units][4*units], read as [4*units][units] (its row p = 4k + g holds gate
// g's weights from h_k), into shared memory, element j of row p to staged[slot(p, j)], and as it is
// into `saved` unless null (the call's own copy for the backward pass, which a launch of its own
// would otherwise make). Thread (q, j) of the block's groups x units copies element j of rows q,
// q + groups, ...: coalesced, and no division per element. STAGED loads in flight per thread
// before their stores: a load at a time would wait out the memory's latency per element.
template <typename T, typename Slot>
__device__ __forceinline__ void stage(T* staged, const T* recurrent_kernel, T* saved, int units, Slot slot) {
    const int groups = blockDim.x / units, rows = 4 * units, j = threadIdx.x % units;
    int p = threadIdx.x / units;
    for (; p + (STAGED - 1) * groups < rows; p += STAGED * groups) {
        T loaded[STAGED];
#pragma unroll
        for (int s = 0; s < STAGED; ++s) loaded[s] = recurrent_kernel[(p + s * groups) * units + j];
#pragma unroll
        for (int s = 0; s < STAGED; ++s) staged[slot(p + s * groups, j)] = loaded[s];
        if (saved) {
#pragma unroll
            for (int s = 0; s < STAGED; ++s) saved[(p + s * groups) * units + j] = loaded[s];
        }
    }
    for (; p < rows; p += groups) {
        const T loaded = recurrent_kernel[p * units + j];
        staged[slot(p, j)] = loaded;
        if (saved) saved[p * units + j] = loaded;
    }
}

// into[rr][g] = zx[b + rr, step, g * units + j] + bias_j[g] for the first `count` of a thread's
// rows, 0 for the others: bias first, as x @ kernel + bias in the reference.
template <typename T>
__device__ __forceinline__ void load_step(T (&into)[ROWS][4], const T* zx, const T (&bias_j)[4], int b, int count,
                                          int time, int step, int units, int j) {
#pragma unroll
    for (int rr = 0; rr < ROWS; ++rr) {
        const T* zx_step = zx + ((size_t)(b + rr) * time + step) * 4 * units + j;
#pragma unroll
        for (int g = 0; g < 4; ++g) into[rr][g] = rr < count ? zx_step[g * units] + bias_j[g] : T(0);
    }
}

// Forward. Shared memory: recurrent_kernel [units][ld], then h [2][padded_rows][units]
// (double-buffered, so one barrier per step suffices: step t reads buffer t % 2 and writes the
// other, and a thread can only overwrite a buffer after every thread passed the barrier that
// follows the reads of it). recurrent_kernel is staged by row k, then unit j, its four gates'
// weights of unit j side by side as [k][4 / LANES][units][LANES]: per k a thread reads them in one
// 16-byte vector (two in double), whose ROWS values of h then serve 4 * ROWS multiply-adds.
// bias may be null (zero). Block 0 copies recurrent_kernel into saved_recurrent_kernel as it
// stages it. Writes c0 and h0 at their places in c and inputs, then each step's h into inputs at
// the next step's place and into outputs (outputs_per_step) or only the last, and the final
// h_final, c_final.
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS / (sizeof(T) / 4), 1)
persistent_forward(const T* __restrict__ zx, const T* __restrict__ bias, const T* __restrict__ recurrent_kernel,
                   T* __restrict__ saved_recurrent_kernel, const T* __restrict__ h0, const T* __restrict__ c0,
                   T* __restrict__ inputs, T* __restrict__ c, T* __restrict__ gates, T* __restrict__ outputs,
                   T* __restrict__ h_final, T* __restrict__ c_final, int batch, int time, int input_dim, int units,
                   int rows, int go_backwards, int outputs_per_step, int activation, int recurrent_activation) {
    FASTLSTM_DYNAMIC_SHARED(shared);
    const auto [ld, r_s, h_s, padded_rows, first, j, b, count] = place<T>(shared, batch, units, rows);
    constexpr int LANES = Vector<T>::LANES;
    stage(r_s, recurrent_kernel, blockIdx.x == 0 ? saved_recurrent_kernel : nullptr, units, [units](int p, int unit) {
        return (p - p % LANES) * units + unit * LANES + p % LANES;  // p = 4k + g, LANES divides 4
    });
    const int width = input_width(input_dim, units, bias);  // its h part starts at input_dim
    T bias_j[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) bias_j[g] = bias ? bias[g * units + j] : T(0);
    T c_t[ROWS];
#pragma unroll
    for (int rr = 0; rr < ROWS; ++rr) {
        const size_t row_state = (size_t)(b + rr) * units + j;
        const T h_start = rr < count ? h0[row_state] : T(0);
        c_t[rr] = rr < count ? c0[row_state] : T(0);
        h_s[(first + rr) * units + j] = h_start;
        if (rr < count) {
            c[(size_t)(b + rr) * (time + 1) * units + j] = c_t[rr];
            inputs[((size_t)(b + rr) * time + caller_step(0, time, go_backwards)) * width + input_dim + j] = h_start;
            if (bias) write_ones(inputs, b + rr, time, width, units, j);
        }
    }
    __syncthreads();

    // The step's sums, started from its zx, which is loaded a step ahead, so that no load from
    // global memory starts the recurrence's critical path.
    T z[ROWS][4];
    load_step(z, zx, bias_j, b, count, time, caller_step(0, time, go_backwards), units, j);
    for (int t = 0; t < time; ++t) {
        const T* h_prev = h_s + ((t & 1) * padded_rows + first) * units;
        const bool more = t + 1 < time;
        const int ahead = more ? caller_step(t + 1, time, go_backwards) : 0;
        T zx_ahead[ROWS][4];
        load_step(zx_ahead, zx, bias_j, b, more ? count : 0, time, ahead, units, j);
        const Vector<T>* w_j = reinterpret_cast<const Vector<T>*>(r_s) + j;
#pragma unroll 4
        for (int k = 0; k < units; ++k) {
            Vector<T> w[4 / LANES];
#pragma unroll
            for (int v = 0; v < 4 / LANES; ++v) w[v] = w_j[(k * 4 / LANES + v) * units];
#pragma unroll
            for (int rr = 0; rr < ROWS; ++rr) {
                const T hk = h_prev[rr * units + k];
#pragma unroll
                for (int g = 0; g < 4; ++g) z[rr][g] += hk * w[g / LANES].lane[g % LANES];
            }
        }
        T* h_next = h_s + (((t + 1) & 1) * padded_rows + first) * units + j;
#pragma unroll
        for (int rr = 0; rr < ROWS; ++rr) {
            const T i = activate(recurrent_activation, z[rr][0]), f = activate(recurrent_activation, z[rr][1]);
            const T g = activate(activation, z[rr][2]), o = activate(recurrent_activation, z[rr][3]);
#pragma unroll
            for (int q = 0; q < 4; ++q) z[rr][q] = zx_ahead[rr][q];  // the next step's start
            c_t[rr] = f * c_t[rr] + i * g;
            const T h_t = o * activate(activation, c_t[rr]);
            h_next[rr * units] = rr < count ? h_t : T(0);
            if (rr < count) {
                const size_t row = b + rr;
                c[(row * (time + 1) + t + 1) * units + j] = c_t[rr];
                if (more) inputs[(row * time + ahead) * width + input_dim + j] = h_t;
                if (outputs_per_step) outputs[(row * time + t) * units + j] = h_t;
                T* gates_t = gates + (row * time + t) * 4 * units + j;
                gates_t[0] = i;
                gates_t[units] = f;
                gates_t[2 * units] = g;
                gates_t[3 * units] = o;
            }
        }
        __syncthreads();
    }
    // The last step's h, in the buffer the thread itself wrote last.
    const T* h_last = h_s + ((time & 1) * padded_rows + first) * units + j;
#pragma unroll
    for (int rr = 0; rr < ROWS; ++rr) {
        if (rr < count) {
            const size_t row_state = (size_t)(b + rr) * units + j;
            h_final[row_state] = h_last[rr * units];
            c_final[row_state] = c_t[rr];
            if (!outputs_per_step) outputs[row_state] = h_last[rr * units];
        }
    }
}

// Backward, in reverse time. dh and dc of each of a thread's rows stay in registers; dz of a row
// goes through shared memory [2][padded_rows][4*units] (double-buffered as h in the forward),
// because dh_{t-1}[j] = sum_m dz_t[m] * recurrent_kernel[j][m] needs the whole row. That sum reads
// the thread's weight row and the rows of dz in 16-byte vectors: one weight vector serves ROWS
// rows, and each (row, lane) is an independent chain of multiply-adds, summed at the end.
// dy: [batch, time, units] when dy_per_step, else [batch, 1, units] (the last output's gradient);
// dy, dh_final and dc_final may be null (zero). Writes dz (in the caller's order), and dh0, dc0.
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS / (sizeof(T) / 4), 1)
persistent_backward(const T* __restrict__ recurrent_kernel, const T* __restrict__ c, const T* __restrict__ gates,
                    const T* __restrict__ dy, int dy_per_step, const T* __restrict__ dh_final,
                    const T* __restrict__ dc_final, T* __restrict__ dz, T* __restrict__ dh0, T* __restrict__ dc0,
                    int batch, int time, int units, int rows, int go_backwards, int activation,
                    int recurrent_activation) {
    FASTLSTM_DYNAMIC_SHARED(shared);
    const auto [ld, r_s, dz_s, padded_rows, first, j, b, count] = place<T>(shared, batch, units, rows);
    constexpr int LANES = Vector<T>::LANES;
    const int row_length = ld;  // a lambda cannot capture a structured binding before C++20
    stage(r_s, recurrent_kernel, static_cast<T*>(nullptr), units,
          [units, row_length](int p, int unit) { return p / 4 * row_length + p % 4 * units + unit; });
    T dh[ROWS], dc[ROWS];
#pragma unroll
    for (int rr = 0; rr < ROWS; ++rr) {
        const size_t row_state = (size_t)(b + rr) * units + j;
        dh[rr] = dc[rr] = T(0);
        if (rr < count) {
            if (dh_final) dh[rr] = dh_final[row_state];
            if (dc_final) dc[rr] = dc_final[row_state];
            if (dy && !dy_per_step) dh[rr] += dy[row_state];
        }
    }
    __syncthreads();

    for (int t = time - 1; t >= 0; --t) {
        T* dz_rows = dz_s + ((t & 1) * padded_rows + first) * 4 * units;
#pragma unroll
        for (int rr = 0; rr < ROWS; ++rr) {
            T* dz_row = dz_rows + rr * 4 * units + j;
            if (rr < count) {
                const size_t step = (size_t)(b + rr) * time + t;
                if (dy && dy_per_step) dh[rr] += dy[step * units + j];
                const T* gates_t = gates + step * 4 * units + j;
                const T i = gates_t[0], f = gates_t[units], g = gates_t[2 * units], o = gates_t[3 * units];
                const size_t state = (size_t)(b + rr) * (time + 1) + t;  // c_{t-1}'s index in c, then c_t's
                const T c_prev = c[state * units + j];
                const T act_c = activate(activation, c[(state + 1) * units + j]);
                dc[rr] += dh[rr] * o * activation_grad(activation, act_c);
                const T d[4] = {dc[rr] * g * activation_grad(recurrent_activation, i),
                                dc[rr] * c_prev * activation_grad(recurrent_activation, f),
                                dc[rr] * i * activation_grad(activation, g),
                                dh[rr] * act_c * activation_grad(recurrent_activation, o)};
                T* dz_t = dz + ((size_t)(b + rr) * time + caller_step(t, time, go_backwards)) * 4 * units + j;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    dz_row[q * units] = d[q];
                    dz_t[q * units] = d[q];
                }
                dc[rr] *= f;
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q) dz_row[q * units] = T(0);
            }
        }
        __syncthreads();
        const Vector<T>* w_j = reinterpret_cast<const Vector<T>*>(r_s + j * ld);
        const Vector<T>* dz_v = reinterpret_cast<const Vector<T>*>(dz_rows);
        const int vectors = 4 * units / LANES;
        T partial[ROWS][LANES] = {};
        for (int m = 0; m < vectors; ++m) {
            const Vector<T> w = w_j[m];
#pragma unroll
            for (int rr = 0; rr < ROWS; ++rr) {
                const Vector<T> d = dz_v[rr * vectors + m];
#pragma unroll
                for (int l = 0; l < LANES; ++l) partial[rr][l] += d.lane[l] * w.lane[l];
            }
        }
#pragma unroll
        for (int rr = 0; rr < ROWS; ++rr) {
            T sum = T(0);
#pragma unroll
            for (int l = 0; l < LANES; ++l) sum += partial[rr][l];
            dh[rr] = sum;
        }
    }
#pragma unroll
    for (int rr = 0; rr < ROWS; ++rr) {
        if (rr < count) {
            const size_t row_state = (size_t)(b + rr) * units + j;
            dh0[row_state] = dh[rr];
            dc0[row_state] = dc[rr];
        }
    }
}

}  // namespace fastlstm
