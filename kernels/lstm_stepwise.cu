// The stepwise path, for units too large to keep recurrent_kernel in shared memory: per time step
// the caller runs one GEMM (cuBLAS) and one of these fused pointwise kernels. One thread per
// (batch row, unit); layouts as in lstm_persistent.cu, whose arrays these take and fill alike.
#include "lstm_common.cuh"

namespace fastlstm {

// Step t forward: z = zx + bias + hr at the step, where hr = h_{t-1} @ recurrent_kernel [batch,
// 4*units] is the caller's GEMM of h0 or of h_step; bias may be null (zero). Writes the activated
// gates[:, t], c[:, t + 1], h_t into inputs at step t + 1, into h_step [batch, units] (the next
// step's GEMM operand: contiguous, where inputs' h part is a strided slice that cuBLAS could not
// take without a copy) and into outputs (outputs_per_step) or only the last; at the first step
// also c0 and h0 into c and inputs, at the last h_final and c_final; and with a bias the ones of
// inputs.
template <typename T>
__global__ void stepwise_forward(const T* __restrict__ zx, const T* __restrict__ hr, const T* __restrict__ bias,
                                 const T* __restrict__ h0, const T* __restrict__ c0, T* __restrict__ inputs,
                                 T* __restrict__ c, T* __restrict__ gates, T* __restrict__ outputs,
                                 T* __restrict__ h_final, T* __restrict__ c_final, T* __restrict__ h_step, int batch,
                                 int time, int input_dim, int units, int t, int go_backwards, int outputs_per_step,
                                 int activation, int recurrent_activation) {
    const int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * units) return;
    const int b = index / units, j = index % units;
    const size_t row = b, width = input_width(input_dim, units, bias);
    const T* zx_t = zx + (row * time + caller_step(t, time, go_backwards)) * 4 * units + j;
    const T* hr_b = hr + row * 4 * units + j;
    // bias first, as x @ kernel + bias in the reference
    const auto z = [&](int g) { return zx_t[g * units] + (bias ? bias[g * units + j] : T(0)) + hr_b[g * units]; };
    const T i = activate(recurrent_activation, z(0)), f = activate(recurrent_activation, z(1));
    const T g = activate(activation, z(2)), o = activate(recurrent_activation, z(3));
    const size_t state = (row * (time + 1) + t) * units + j;
    if (t == 0) {
        c[state] = c0[index];
        inputs[(row * time + caller_step(0, time, go_backwards)) * width + input_dim + j] = h0[index];
        if (bias) write_ones(inputs, row, time, width, units, j);
    }
    const T c_t = f * (t == 0 ? c0[index] : c[state]) + i * g;
    const T h_t = o * activate(activation, c_t);
    c[state + units] = c_t;
    if (t + 1 < time) {
        inputs[(row * time + caller_step(t + 1, time, go_backwards)) * width + input_dim + j] = h_t;
        h_step[index] = h_t;
    } else {
        h_final[index] = h_t;
        c_final[index] = c_t;
    }
    if (outputs_per_step) outputs[(row * time + t) * units + j] = h_t;
    else if (t + 1 == time) outputs[index] = h_t;
    T* gates_t = gates + (row * time + t) * 4 * units + j;
    gates_t[0] = i;
    gates_t[units] = f;
    gates_t[2 * units] = g;
    gates_t[3 * units] = o;
}

// Step t backward: dh [batch, units] is the gradient reaching h_t from step t + 1 (the caller's
// GEMM dz at step t + 1 @ recurrent_kernel^T), dc the one reaching c_t, carried in place to step
// t - 1; at the last step dh_final and dc_final (null: zero) take their place. dy as in
// persistent_backward (null: zero). Writes dz at step t, in the caller's order, and into dz_step
// [batch, 4*units], the operand of the caller's GEMM dz_t @ recurrent_kernel^T (contiguous, as
// h_step forward).
template <typename T>
__global__ void stepwise_backward(const T* __restrict__ c, const T* __restrict__ gates, const T* __restrict__ dy,
                                  int dy_per_step, const T* __restrict__ dh_final, const T* __restrict__ dc_final,
                                  const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ dz,
                                  T* __restrict__ dz_step, int batch, int time, int units, int t, int go_backwards,
                                  int activation, int recurrent_activation) {
    const int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * units) return;
    const int b = index / units, j = index % units;
    const bool last = t == time - 1;
    T dh_t = last ? (dh_final ? dh_final[index] : T(0)) : dh[index];
    const T dc_next = last ? (dc_final ? dc_final[index] : T(0)) : dc[index];
    if (dy && dy_per_step) dh_t += dy[((size_t)b * time + t) * units + j];
    if (dy && !dy_per_step && last) dh_t += dy[index];
    const T* gates_t = gates + ((size_t)b * time + t) * 4 * units + j;
    const T i = gates_t[0], f = gates_t[units], g = gates_t[2 * units], o = gates_t[3 * units];
    const size_t state = ((size_t)b * (time + 1) + t) * units + j;
    const T act_c = activate(activation, c[state + units]);
    const T dc_t = dc_next + dh_t * o * activation_grad(activation, act_c);
    const T dz_gates[4] = {dc_t * g * activation_grad(recurrent_activation, i),
                           dc_t * c[state] * activation_grad(recurrent_activation, f),
                           dc_t * i * activation_grad(activation, g),
                           dh_t * act_c * activation_grad(recurrent_activation, o)};
    T* dz_t = dz + ((size_t)b * time + caller_step(t, time, go_backwards)) * 4 * units + j;
    T* dz_row = dz_step + (size_t)b * 4 * units + j;
    for (int gate = 0; gate < 4; ++gate) {
        dz_t[gate * units] = dz_gates[gate];
        dz_row[gate * units] = dz_gates[gate];
    }
    dc[index] = dc_t * f;
}

}  // namespace fastlstm
