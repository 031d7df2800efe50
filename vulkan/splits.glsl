/* The split attention's combination, shared by attention_reduce.comp and attention.comp's
 * fused path (the same bits either way): channel c of one query head's output from its n
 * partials (max, sum, unnormalised acc[d]) in the float array `part` from index p, `stride`
 * floats apart, into `res`. A macro: GLSL passes no buffer to a function. */
#define COMBINE_SPLITS(part, p, stride, n, c, res)                                            \
    {                                                                                          \
        float m_ = -FKV_INF;                                                                   \
        for (uint s_ = 0u; s_ < (n); s_++)                                                     \
            m_ = max(m_, part[(p) + s_ * (stride)]);                                           \
        float l_ = 0.0, a_ = 0.0;                                                              \
        if (m_ != -FKV_INF) {                                                                  \
            for (uint s_ = 0u; s_ < (n); s_++) {                                               \
                float ms_ = part[(p) + s_ * (stride)];                                         \
                if (ms_ == -FKV_INF)                                                           \
                    continue; /* an empty split */                                             \
                float w_ = exp(ms_ - m_);                                                      \
                l_ += part[(p) + s_ * (stride) + 1u] * w_;                                     \
                a_ += part[(p) + s_ * (stride) + 2u + (c)] * w_;                               \
            }                                                                                  \
        }                                                                                      \
        res = l_ > 0.0 ? a_ / l_ : 0.0;                                                        \
    }
