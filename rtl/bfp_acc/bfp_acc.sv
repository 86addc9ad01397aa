// SPDX-License-Identifier: Apache-2.0
// bfp_acc: one step of the accumulation across blocks, bit for bit the golden model's
// simulator/numerics.py accumulate_block(acc, partial, scale):
//
//   product = fp32(dot * 2**(esum - 2*(MANT-1)))   (NaN if nan; bfp_to_fp32)
//   sum     = fp32(acc + product)                   IEEE-754 binary32 addition (fp32_add)
//
// both rounded to nearest even, subnormals kept, overflow to +-inf, every NaN the
// canonical quiet NaN 32'h7FC00000, an exact cancellation +0. (dot, esum, nan) are
// bfp_dot's outputs; acc is the running fp32 sum (+0 before the first block).
//
// Timing: 1 register stage, latency 1 cycle (accepted at edge t, out_valid_o after edge
// t+1), throughput 1 step per cycle; out_ready_i low stalls (combinational ready).
module bfp_acc #(
    parameter int BLOCK    = 16,
    parameter int MANT     = 3,
    parameter int EXP_BITS = 8,
    // BIAS is not needed by the datapath (esum is already unbiased); it is a parameter so
    // the testbench reads the whole format from the DUT (rtl.tb.bench.format_from_dut)
    /* verilator lint_off UNUSEDPARAM */
    parameter int BIAS     = 127,
    /* verilator lint_on UNUSEDPARAM */
    // derived widths, exactly as bfp_dot derives them (not meant to be overridden)
    parameter int MAX_DOT  = BLOCK * ((1 << MANT) - 1) * ((1 << MANT) - 1),  // largest |dot|
    parameter int DOT_W    = $clog2(MAX_DOT + 1) + 1,                        // signed
    parameter int ESUM_W   = EXP_BITS + 2   // signed; |esum| <= 2 * (2**E - 2) < 2**(E+1)
) (
    input  logic                      clk_i,
    input  logic                      rst_ni,       // synchronous, active low
    input  logic                      in_valid_i,
    output logic                      in_ready_o,
    input  logic [31:0]               acc_i,        // fp32 running sum
    input  logic signed [DOT_W-1:0]   dot_i,        // exact integer block dot product
    input  logic signed [ESUM_W-1:0]  esum_i,       // unbiased exponent sum
    input  logic                      nan_i,        // a non-finite block
    output logic                      out_valid_o,
    input  logic                      out_ready_i,
    output logic [31:0]               sum_o         // fp32(acc + block product)
);
  logic [31:0] product_c, sum_c;

  bfp_to_fp32 #(
      .MANT  (MANT),
      .DOT_W (DOT_W),
      .ESUM_W(ESUM_W)
  ) u_product (
      .dot_i  (dot_i),
      .esum_i (esum_i),
      .nan_i  (nan_i),
      .value_o(product_c)
  );

  fp32_add u_add (
      .a_i  (acc_i),
      .b_i  (product_c),
      .sum_o(sum_c)
  );

  assign in_ready_o = !out_valid_o || out_ready_i;

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      out_valid_o <= 1'b0;
    end else if (in_ready_o) begin
      out_valid_o <= in_valid_i;
      if (in_valid_i) sum_o <= sum_c;
    end
  end
endmodule
