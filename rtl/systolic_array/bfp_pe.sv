// SPDX-License-Identifier: Apache-2.0
// bfp_pe: one processing element of the weight-stationary systolic array
// (systolic_array.sv). It holds one weight code {s, m} and, each cycle the array advances,
//
//   psum_o <= psum_i + qa * qw        exact signed integers, q = (-1)**s * m
//   a_o    <= a_i                     the activation code moves one PE to the right
//
// A code {1, 0} (negative zero) contributes 0. The weight register loads on w_load_i
// whatever en_i is (the array only loads weights while no data is in flight).
//
// Timing: one register stage on each of a_o and psum_o, enabled by en_i (the array's
// global advance); no reset (datapath only, the array's valid bits travel separately).
module bfp_pe #(
    parameter int MANT   = 3,    // mantissa bits of an element code (sign excluded)
    parameter int PSUM_W = 12    // signed width of the partial sum (a segment's block dot)
) (
    input  logic                     clk_i,
    input  logic                     en_i,       // the array advances this cycle
    input  logic                     w_load_i,   // load w_code_i into the weight register
    input  logic [MANT:0]            w_code_i,   // {s, m}
    input  logic [MANT:0]            a_i,        // activation code {s, m} from the left
    output logic [MANT:0]            a_o,        // to the right, one cycle later
    input  logic signed [PSUM_W-1:0] psum_i,     // from the PE above
    output logic signed [PSUM_W-1:0] psum_o      // to the PE below, one cycle later
);
  logic [MANT:0]        w_q;
  logic [2*MANT-1:0]    prod;
  logic signed [PSUM_W-1:0] psum_c;

  assign prod   = a_i[MANT-1:0] * w_q[MANT-1:0];
  assign psum_c = (a_i[MANT] ^ w_q[MANT]) ? psum_i - PSUM_W'(prod) : psum_i + PSUM_W'(prod);

  always_ff @(posedge clk_i) begin
    if (w_load_i) w_q <= w_code_i;
    if (en_i) begin
      a_o    <= a_i;
      psum_o <= psum_c;
    end
  end
endmodule
