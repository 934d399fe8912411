// Shared by the LSTM kernels: 16-byte vectors, activation functions (each with its derivative
// written in terms of its own output, so the backward pass never recomputes an activation), the
// time order of the caller's arrays, and the hook for dynamic shared memory. Activation ids match
// kernels/activation_ids.py.
#pragma once

#ifndef FASTLSTM_DYNAMIC_SHARED
// The CPU emulation harness in tests/ defines this hook; everything else in the sources is CUDA.
#define FASTLSTM_DYNAMIC_SHARED(name) extern __shared__ unsigned char name[]
#endif

namespace fastlstm {

// VECTOR_BYTES matches fastlstm/backends/plan.py's.
enum { VECTOR_BYTES = 16 };

// 16 bytes of T, loaded and stored as one vector.
template <typename T>
struct alignas(VECTOR_BYTES) Vector {
    enum { LANES = VECTOR_BYTES / sizeof(T) };
    T lane[LANES];
};

enum Activation { TANH = 0, SIGMOID = 1, HARD_SIGMOID = 2, HARD_SIGMOID_KERAS2 = 3, RELU = 4, SOFTSIGN = 5, LINEAR = 6 };

// The id is uniform across a block, so the switch costs a few instructions, no divergence.
template <typename T>
__device__ __forceinline__ T activate(int id, T z) {
    switch (id) {
        case TANH: return tanh(z);
        case SIGMOID: {  // exp of a non-positive number only: no overflow at |z| = 1e4
            T e = exp(-fabs(z));
            return (z >= T(0) ? T(1) : e) / (T(1) + e);
        }
        case HARD_SIGMOID: return fmin(fmax(z + T(3), T(0)), T(6)) / T(6);  // Keras 3: relu6(z + 3) / 6
        case HARD_SIGMOID_KERAS2: return fmin(fmax(T(0.2) * z + T(0.5), T(0)), T(1));
        case RELU: return fmax(z, T(0));
        case SOFTSIGN: return z / (T(1) + fabs(z));
        default: return z;  // LINEAR
    }
}

template <typename T>
__device__ __forceinline__ T activation_grad(int id, T y) {
    switch (id) {
        case TANH: return T(1) - y * y;
        case SIGMOID: return y * (T(1) - y);
        case HARD_SIGMOID: return (y > T(0) && y < T(1)) ? T(1) / T(6) : T(0);
        case HARD_SIGMOID_KERAS2: return (y > T(0) && y < T(1)) ? T(0.2) : T(0);
        case RELU: return y > T(0) ? T(1) : T(0);
        case SOFTSIGN: { T s = T(1) - fabs(y); return s * s; }
        default: return T(1);  // LINEAR
    }
}

// The caller's time index of processing step t: go_backwards processes the sequence from its end.
// zx, inputs and dz are in the caller's order, so that x and dx need no reversed copy.
__device__ __forceinline__ int caller_step(int t, int time, int go_backwards) {
    return go_backwards ? time - 1 - t : t;
}

// The length of a row of inputs: [x_t, h_{t-1}], and with a bias a 1 after them, so that the
// weight gradients' one product of inputs with dz sums dbias too.
__device__ __forceinline__ int input_width(int input_dim, int units, const void* bias) {
    return input_dim + units + (bias ? 1 : 0);
}

// The 1 that ends each of row b's rows of inputs (with a bias): unit j's thread writes steps j,
// j + units, ...
template <typename T>
__device__ __forceinline__ void write_ones(T* inputs, size_t b, int time, int width, int units, int j) {
    for (int t = j; t < time; t += units) inputs[(b * time + t) * width + width - 1] = T(1);
}

}  // namespace fastlstm
