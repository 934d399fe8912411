// The stepwise path, for units too large to keep recurrent_kernel in shared memory: per time step
// the caller runs one GEMM (cuBLAS) and one of these fused pointwise kernels. One thread per
// (batch row, unit); layouts as in lstm_persistent.cu.
#include "lstm_common.cuh"

namespace fastlstm {

// Step t forward: z = zx[:, t] + hr, where hr = h[:, t] @ recurrent_kernel [batch, 4*units];
// writes the activated gates[:, t], c[:, t + 1] and h[:, t + 1].
template <typename T>
__global__ void stepwise_forward(const T* __restrict__ zx, const T* __restrict__ hr, T* __restrict__ h,
                                 T* __restrict__ c, T* __restrict__ gates, int batch, int time, int units, int t,
                                 int activation, int recurrent_activation) {
    const int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * units) return;
    const int b = index / units, j = index % units;
    const T* zx_t = zx + ((size_t)b * time + t) * 4 * units + j;
    const T* hr_b = hr + (size_t)b * 4 * units + j;
    const T i = activate(recurrent_activation, zx_t[0] + hr_b[0]);
    const T f = activate(recurrent_activation, zx_t[units] + hr_b[units]);
    const T g = activate(activation, zx_t[2 * units] + hr_b[2 * units]);
    const T o = activate(recurrent_activation, zx_t[3 * units] + hr_b[3 * units]);
    const size_t state = ((size_t)b * (time + 1) + t) * units + j;
    const T c_t = f * c[state] + i * g;
    c[state + units] = c_t;
    h[state + units] = o * activate(activation, c_t);
    T* gates_t = gates + ((size_t)b * time + t) * 4 * units + j;
    gates_t[0] = i;
    gates_t[units] = f;
    gates_t[2 * units] = g;
    gates_t[3 * units] = o;
}

// Step t backward: dh [batch, units] is the gradient reaching h_t from step t + 1 (the caller's
// GEMM dz[:, t + 1] @ recurrent_kernel^T); dy as in persistent_backward (null: zero). Writes
// dz[:, t] and carries dc [batch, units] in place from step t to step t - 1.
template <typename T>
__global__ void stepwise_backward(const T* __restrict__ c, const T* __restrict__ gates, const T* __restrict__ dy,
                                  int dy_per_step, const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ dz,
                                  int batch, int time, int units, int t, int activation, int recurrent_activation) {
    const int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * units) return;
    const int b = index / units, j = index % units;
    T dh_t = dh[index];
    if (dy && dy_per_step) dh_t += dy[((size_t)b * time + t) * units + j];
    if (dy && !dy_per_step && t == time - 1) dh_t += dy[index];
    const T* gates_t = gates + ((size_t)b * time + t) * 4 * units + j;
    const T i = gates_t[0], f = gates_t[units], g = gates_t[2 * units], o = gates_t[3 * units];
    const size_t state = ((size_t)b * (time + 1) + t) * units + j;
    const T act_c = activate(activation, c[state + units]);
    const T dc_t = dc[index] + dh_t * o * activation_grad(activation, act_c);
    T* dz_t = dz + ((size_t)b * time + t) * 4 * units + j;
    dz_t[0] = dc_t * g * activation_grad(recurrent_activation, i);
    dz_t[units] = dc_t * c[state] * activation_grad(recurrent_activation, f);
    dz_t[2 * units] = dc_t * i * activation_grad(activation, g);
    dz_t[3 * units] = dh_t * act_c * activation_grad(recurrent_activation, o);
    dc[index] = dc_t * f;
}

}  // namespace fastlstm
