// SPDX-License-Identifier: Apache-2.0
// bfp_pe: one processing element of the weight-stationary systolic array
// (systolic_array.sv). It holds two weight codes {s, m}, one per weight bank, and, each
// cycle the array advances,
//
//   psum_o <= psum_i + qa * qw[bank_i]   exact signed integers, q = (-1)**s * m
//   a_o    <= a_i                        the activation code moves one PE to the right,
//   bank_o <= bank_i                     with the bank its row computes with
//
// A code {1, 0} (negative zero) contributes 0. The weight register of bank w_bank_i loads
// on w_load_i whatever en_i is: the array writes only the bank that no row in flight uses
// (its shadow bank), so a load never changes a product in flight.
//
// Timing: one register stage on each of a_o, bank_o and psum_o, enabled by en_i (the
// array's global advance); no reset (datapath only, the array's valid bits travel
// separately).
module bfp_pe #(
    parameter int MANT   = 3,    // mantissa bits of an element code (sign excluded)
    parameter int PSUM_W = 12    // signed width of the partial sum (a segment's block dot)
) (
    input  logic                     clk_i,
    input  logic                     en_i,       // the array advances this cycle
    input  logic                     w_load_i,   // load w_code_i into bank w_bank_i
    input  logic                     w_bank_i,
    input  logic [MANT:0]            w_code_i,   // {s, m}
    input  logic [MANT:0]            a_i,        // activation code {s, m} from the left
    input  logic                     bank_i,     // the weight bank a_i's row uses
    output logic [MANT:0]            a_o,        // to the right, one cycle later
    output logic                     bank_o,
    input  logic signed [PSUM_W-1:0] psum_i,     // from the PE above
    output logic signed [PSUM_W-1:0] psum_o      // to the PE below, one cycle later
);
  logic [MANT:0]            w0_q, w1_q;  // bank 0, bank 1
  logic [MANT:0]            w;
  logic [2*MANT-1:0]        prod;
  logic signed [PSUM_W-1:0] psum_c;

  assign w      = bank_i ? w1_q : w0_q;
  assign prod   = a_i[MANT-1:0] * w[MANT-1:0];
  assign psum_c = (a_i[MANT] ^ w[MANT]) ? psum_i - PSUM_W'(prod) : psum_i + PSUM_W'(prod);

  always_ff @(posedge clk_i) begin
    if (w_load_i && !w_bank_i) w0_q <= w_code_i;
    if (w_load_i && w_bank_i) w1_q <= w_code_i;
    if (en_i) begin
      a_o    <= a_i;
      bank_o <= bank_i;
      psum_o <= psum_c;
    end
  end
endmodule
