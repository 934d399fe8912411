// Runs CUDA kernel sources unchanged on the CPU: one std::thread per CUDA thread of a block, a
// std::barrier for __syncthreads, blocks one after another with fresh, poisoned (NaN-filled)
// dynamic shared memory, so a read of shared memory no thread of the block wrote shows up.
#pragma once
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::tanh;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emulation {
inline thread_local dim3 thread_index, block_index;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline thread_local unsigned char* dynamic_shared = nullptr;
}  // namespace emulation

#define threadIdx (emulation::thread_index)
#define blockIdx (emulation::block_index)
#define blockDim (emulation::block_dim)
#define gridDim (emulation::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define FASTLSTM_DYNAMIC_SHARED(name) unsigned char* name = emulation::dynamic_shared

inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }

namespace emulation {

// kernel(args...) for every thread of every block; args[i] points at the i-th argument's value,
// as cuLaunchKernel's kernelParams.
template <typename... Params, std::size_t... I>
void call(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<Params*>(args[I])...);
}

template <typename... Params>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, void** args) {
    grid_dim = grid;
    block_dim = block;
    const unsigned threads = block.x * block.y * block.z;
    std::vector<unsigned char> shared(shared_bytes);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::memset(shared.data(), 0xFF, shared.size());  // NaN in float and double
                std::barrier<> barrier(threads);
                block_barrier = &barrier;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned t = 0; t < threads; ++t)
                    pool.emplace_back([&, t] {
                        thread_index = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                        block_index = {bx, by, bz};
                        dynamic_shared = shared.data();
                        call(kernel, args, std::index_sequence_for<Params...>{});
                    });
                for (auto& thread : pool) thread.join();
            }
}

}  // namespace emulation
