// AdamW step on f32 master weights, the update of kernels/src/optim.rs:
//   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
// (decay = 1 - lr*wd, step = lr/bc1, rbc2 = 1/sqrt(bc2) computed on the host in f64 and rounded to f32).
// Grad-norm clipping uses sq_diff_partial (loss.cu, has_t = 0) for the norm and scale_inplace_f32
// (elementwise.cu) for the scaling.
// Layout: contiguous p, m, v (f32) and g (any dtype). Launch: grid-stride, 256 threads.

extern "C" __global__ void adamw_step(float* p, const void* g, int gdt, float* m, float* v, float b1, float b2,
                                      float decay, float step, float rbc2, float eps, i64 n) {
    GRID_STRIDE(i, n) {
        float gi = ld(g, gdt, i);
        float pi = p[i] * decay;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step * mi / (sqrtf(vi) * rbc2 + eps);
    }
}
