// SPDX-License-Identifier: Apache-2.0
// bfp_dot: the block dot product of the matrix unit, bit for bit the golden model's
// per-block partial (simulator/numerics.py block_partials and block_scales):
//
//   dot  = sum_b qa[b] * qw[b]          exact signed integer, qa = (-1)**s * m
//   esum = (a_exp - BIAS) + (w_exp - BIAS)      unbiased exponent sum
//   nan  = a_exp or w_exp is all ones (a non-finite block: the golden scale is NaN)
//
// The block product the accumulator rounds to fp32 is dot * 2**(esum - 2*(MANT-1)), or
// NaN if nan is set; esum is forced to 0 then (dot is still the integer dot product).
// A code {1, 0} (negative zero) contributes 0.
//
// Timing: 1 register stage, latency 1 cycle (accepted at edge t, out_valid_o after edge
// t+1), throughput 1 block pair per cycle; out_ready_i low stalls (combinational ready).
module bfp_dot #(
    parameter int BLOCK    = 16,
    parameter int MANT     = 3,
    parameter int EXP_BITS = 8,
    parameter int BIAS     = 127,
    // derived widths (not meant to be overridden)
    parameter int MAX_DOT  = BLOCK * ((1 << MANT) - 1) * ((1 << MANT) - 1),  // largest |dot|
    parameter int DOT_W    = $clog2(MAX_DOT + 1) + 1,                        // signed
    parameter int ESUM_W   = EXP_BITS + 2   // signed; |esum| <= 2 * (2**E - 2) < 2**(E+1)
) (
    input  logic                       clk_i,
    input  logic                       rst_ni,       // synchronous, active low
    input  logic                       in_valid_i,
    output logic                       in_ready_o,
    input  logic [EXP_BITS-1:0]        a_exp_i,
    input  logic [BLOCK*(MANT+1)-1:0]  a_codes_i,    // element b: {s, m} at [(MANT+1)*b +: MANT+1]
    input  logic [EXP_BITS-1:0]        w_exp_i,
    input  logic [BLOCK*(MANT+1)-1:0]  w_codes_i,
    output logic                       out_valid_o,
    input  logic                       out_ready_i,
    output logic signed [DOT_W-1:0]    out_dot_o,
    output logic signed [ESUM_W-1:0]   out_esum_o,
    output logic                       out_nan_o
);
  localparam int CODE_W = MANT + 1;
  localparam logic [EXP_BITS-1:0] NAN_EXP = {EXP_BITS{1'b1}};

  logic signed [DOT_W-1:0]  dot_c;
  logic signed [ESUM_W-1:0] esum_c;
  logic                     nan_c;

  always_comb begin
    logic [2*MANT-1:0] prod;
    dot_c = '0;
    for (int b = 0; b < BLOCK; b++) begin
      prod = a_codes_i[CODE_W*b +: MANT] * w_codes_i[CODE_W*b +: MANT];
      if (a_codes_i[CODE_W*b + MANT] ^ w_codes_i[CODE_W*b + MANT])
        dot_c = dot_c - DOT_W'(prod);
      else
        dot_c = dot_c + DOT_W'(prod);
    end
    nan_c  = (a_exp_i == NAN_EXP) || (w_exp_i == NAN_EXP);
    esum_c = nan_c ? '0 : ESUM_W'(int'(a_exp_i) + int'(w_exp_i) - 2 * BIAS);
  end

  assign in_ready_o = !out_valid_o || out_ready_i;

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      out_valid_o <= 1'b0;
    end else if (in_ready_o) begin
      out_valid_o <= in_valid_i;
      if (in_valid_i) begin
        out_dot_o  <= dot_c;
        out_esum_o <= esum_c;
        out_nan_o  <= nan_c;
      end
    end
  end
endmodule
