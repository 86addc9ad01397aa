// SPDX-License-Identifier: Apache-2.0
// systolic_array: the matrix unit's weight-stationary systolic array, one GEMM tile pass
// with the golden accumulation order, bit for bit simulator/numerics.py matmul
// (docs/numerics.md, "The matrix unit"). For each activation row n (an fp32 K-slice of
// ROWS elements, in_x_i) and each column c (a stationary weight slice of ROWS codes):
//
//   acc = in_acc_i[c]                                         fp32, +0.0 on a first pass
//   for segment j = 0 .. SEGS-1 (rows j*BLOCK .. j*BLOCK+BLOCK-1, one BFP block each):
//       p   = sum_b qa[n, j, b] * qw[c, j, b]                  exact integer (bfp_pe)
//       d   = fp32(p * 2**(ea[n, j] + ew[c, j] - 2*(MANT-1)))  RNE; NaN if either stored
//                                                             exponent is all ones
//       acc = fp32(acc + d)                                    RNE   (accumulate_block)
//   out_acc_o[c] = acc
//
// so a K longer than ROWS runs in several passes, the previous pass's outputs as acc_in
// (the accumulator memory is outside), and the block order is kept.
//
// Structure: SEGS bfp_quantize instances turn the row into BFP blocks (one block per
// segment). A FIFO of in_acc_i runs beside them (they are elastic; the FIFO makes the
// array independent of their latency). From the quantizers' output on, the datapath is
// one pipeline with a global stall: everything advances when the output can move
// (adv = !out_valid_o || out_ready_i) and the valid bits travel with the data.
// Row r's activation code enters PE (r, 0) r cycles after the quantizer output (skew)
// and moves right one PE per cycle; the integer partial sum moves down one PE per cycle
// and restarts at 0 at the top of each segment. At the bottom of segment j of column c,
// the block dot, the exponent sum (the activation block exponent, delayed along the skew,
// plus the column's stationary weight exponent) and the NaN flag go through bfp_to_fp32
// and fp32_add into the fp32 accumulator, which flows down the column one row per cycle
// (it enters the top of column c delayed by c cycles). The column outputs are de-skewed
// so one output beat holds all COLS results of one row.
//
// Timing: a row accepted at clock edge t is on out_acc_o, out_valid_o high, after edge
// t + LATENCY, LATENCY = QUANT_LATENCY + ROWS + COLS (QUANT_LATENCY cycles in the
// quantizers, ROWS to reach the bottom of column 0, COLS - 1 across to the last column,
// 1 for the last accumulator register). Throughput one row per cycle when not stalled,
// so an always-valid, always-ready pass of N rows takes N + LATENCY cycles from the
// first input handshake to the last output handshake, both counted. out_ready_i low
// stalls everything; in_ready_o depends combinationally on out_ready_i (no skid buffer)
// and on in_swap_i (a swap row waits for a complete shadow bank).
//
// Weights: two banks, each a whole tile (every PE's code and every column's SEGS stored
// exponents). Rows compute with the *active* bank; the weight port writes the other, the
// *shadow* bank, one column per w_valid_i/w_ready_o beat (w_col_i, its SEGS stored
// exponents and ROWS codes), while the active bank computes. A row with in_swap_i high
// starts a new tile: it is accepted only once every column of the shadow bank has been
// written since the last swap (in_ready_o stays low until then), and at its handshake the
// banks trade places, so it and the rows after it use the new tile. Each row carries its
// bank bit through the pipeline (beside its codes along the skew and from PE to PE, beside
// its block exponents to the bottom of each segment), so the last rows of the old tile
// finish with the old weights while the new tile's rows follow them without a gap: a row
// never meets a half-loaded tile. w_ready_o is high while the shadow bank is incomplete and
// no row that uses it is in flight (rows are counted per bank from their input to their
// output handshake), so a tile is never overwritten under a row that uses it; a complete
// shadow bank takes no more beats until its swap. The first row after reset must carry
// in_swap_i (bank 0, active out of reset, holds no tile).
//
// Weight timing: beats are accepted one per cycle; the shadow bank's state is registered,
// so a tile whose first beat is accepted at edge t lets its swap row in at edge
// t + COLS at the earliest, and a shadow bank freed at edge t (the swap, or the output
// handshake of the last row using it) takes its first beat at edge t + 1.
//
// Layout: in_x_i[32*r +: 32] is element r (fp32 bits); in_acc_i / out_acc_o[32*c +: 32]
// is column c; w_exps_i[EXP_BITS*j +: EXP_BITS] is segment j's stored exponent;
// w_codes_i[(MANT+1)*r +: MANT+1] is row r's code {s, m}.
module systolic_array #(
    parameter int ROWS     = 8,     // K-slice per pass (the device's native_dim)
    parameter int COLS     = 8,     // outputs per pass (array_cols)
    parameter int BLOCK    = 8,     // BFP block size; ROWS must be a multiple
    parameter int MANT     = 2,     // mantissa bits per element (no hidden bit)
    parameter int EXP_BITS = 5,     // stored shared-exponent bits
    parameter int BIAS     = 15,    // stored exponent = e + BIAS
    // derived
    localparam int SEGS          = ROWS / BLOCK,                  // blocks per column
    localparam int CODE_W        = MANT + 1,                      // element code {s, m}
    localparam int COL_W         = (COLS > 1) ? $clog2(COLS) : 1, // w_col_i width
    localparam int MAX_DOT       = BLOCK * ((1 << MANT) - 1) * ((1 << MANT) - 1),
    localparam int DOT_W         = $clog2(MAX_DOT + 1) + 1,       // signed block dot (bfp_dot)
    localparam int ESUM_W        = EXP_BITS + 2,                  // signed exponent sum (bfp_dot)
    localparam int QUANT_LATENCY = $clog2(BLOCK) + 2,             // bfp_quantize's LATENCY
    localparam int LATENCY       = QUANT_LATENCY + ROWS + COLS    // accept edge -> out_valid_o
) (
    input  logic                       clk_i,
    input  logic                       rst_ni,      // synchronous, active low
    // weight load: one column per beat
    input  logic                       w_valid_i,
    output logic                       w_ready_o,
    input  logic [COL_W-1:0]           w_col_i,
    input  logic [SEGS*EXP_BITS-1:0]   w_exps_i,
    input  logic [ROWS*CODE_W-1:0]     w_codes_i,
    // activation rows and the accumulators they add to
    input  logic                       in_valid_i,
    output logic                       in_ready_o,
    input  logic                       in_swap_i,   // the row starts the shadow bank's tile
    input  logic [ROWS*32-1:0]         in_x_i,
    input  logic [COLS*32-1:0]         in_acc_i,
    // results: one row of COLS fp32 accumulators per beat
    output logic                       out_valid_o,
    input  logic                       out_ready_i,
    output logic [COLS*32-1:0]         out_acc_o
);
  localparam int                  FIFO_DEPTH = QUANT_LATENCY;  // rows inside the quantizers
  localparam int                  PTR_W      = (FIFO_DEPTH > 1) ? $clog2(FIFO_DEPTH) : 1;
  localparam int                  CNT_W      = $clog2(FIFO_DEPTH + 1);
  localparam int                  ROW_CNT_W  = $clog2(LATENCY + 1);  // rows in flight
  localparam int                  BACK       = LATENCY - QUANT_LATENCY;  // ROWS + COLS stages
  localparam logic [EXP_BITS-1:0] NAN_EXP    = {EXP_BITS{1'b1}};

  if (ROWS % BLOCK != 0 || SEGS < 1) begin : g_rows_not_a_multiple_of_block
    initial $fatal(1, "systolic_array: ROWS (%0d) must be a multiple of BLOCK (%0d)",
                   ROWS, BLOCK);
  end

  // ---- global stall ---------------------------------------------------------------------
  logic adv;                       // the pipeline behind the quantizers advances
  assign adv = !out_valid_o || out_ready_i;

  // ---- front end: quantizers and the accumulator FIFO beside them -------------------------
  logic [SEGS-1:0]          q_in_ready, q_out_valid;
  logic [SEGS*EXP_BITS-1:0] q_exp;
  logic [ROWS*CODE_W-1:0]   q_codes;
  logic                     q_valid, q_in_valid, accept_ok, push, pop;
  logic                     shadow_full, in_bank;  // set in the bank section below

  logic [COLS*32-1:0] fifo_mem  [FIFO_DEPTH];
  logic               fifo_bank [FIFO_DEPTH];  // the weight bank of each row
  logic [PTR_W-1:0]   wr_ptr, rd_ptr;
  logic [CNT_W-1:0]   fifo_cnt;
  logic               fifo_full;

  // every quantizer sees the same handshake, so they run in lockstep
  assign q_valid    = &q_out_valid;
  assign pop        = q_valid && adv;
  assign fifo_full  = fifo_cnt == CNT_W'(FIFO_DEPTH);
  assign accept_ok  = (!fifo_full || pop) && (!in_swap_i || shadow_full);
  assign q_in_valid = in_valid_i && accept_ok;
  assign in_ready_o = accept_ok && (&q_in_ready);
  assign push       = in_valid_i && in_ready_o;

  for (genvar s = 0; s < SEGS; s++) begin : g_quant
    bfp_quantize #(
        .BLOCK(BLOCK), .MANT(MANT), .EXP_BITS(EXP_BITS), .BIAS(BIAS)
    ) u_quant (
        .clk_i      (clk_i),
        .rst_ni     (rst_ni),
        .in_valid_i (q_in_valid),
        .in_ready_o (q_in_ready[s]),
        .in_data_i  (in_x_i[32*BLOCK*s +: 32*BLOCK]),
        .out_valid_o(q_out_valid[s]),
        .out_ready_i(adv),
        .out_exp_o  (q_exp[EXP_BITS*s +: EXP_BITS]),
        .out_codes_o(q_codes[CODE_W*BLOCK*s +: CODE_W*BLOCK]),
        .sr_i       (1'b0),           // nearest even
        .seed_i     (32'd0),
        .index_i    (32'd0)
    );
  end

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      wr_ptr   <= '0;
      rd_ptr   <= '0;
      fifo_cnt <= '0;
    end else begin
      if (push) begin
        fifo_mem[wr_ptr]  <= in_acc_i;
        fifo_bank[wr_ptr] <= in_bank;
        wr_ptr           <= (wr_ptr == PTR_W'(FIFO_DEPTH - 1)) ? '0 : wr_ptr + 1'b1;
      end
      if (pop) rd_ptr <= (rd_ptr == PTR_W'(FIFO_DEPTH - 1)) ? '0 : rd_ptr + 1'b1;
      fifo_cnt <= fifo_cnt + CNT_W'(push) - CNT_W'(pop);
    end
  end

  logic [COLS*32-1:0] acc_head;    // in_acc_i of the row on the quantizers' output
  logic               bank_head;   // and its weight bank
  assign acc_head  = fifo_mem[rd_ptr];
  assign bank_head = fifo_bank[rd_ptr];

  // ---- valid bits: BACK stages behind the quantizers -------------------------------------
  logic [BACK-1:0] vpipe;
  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      vpipe <= '0;
    end else if (adv) begin
      vpipe <= {vpipe[BACK-2:0], q_valid};
    end
  end
  assign out_valid_o = vpipe[BACK-1];

  // ---- weight banks: which one is active, what the shadow holds, who still uses it -------
  logic                 active_q;     // the bank that rows accepted now compute with
  logic [COLS-1:0]      loaded_q;     // shadow bank columns written since the last swap
  logic [ROW_CNT_W-1:0] n_act_q;      // rows in flight on the active bank
  logic [ROW_CNT_W-1:0] n_old_q;      // rows in flight on the shadow bank (the old tile's)
  logic                 w_fire, swap, out_fire;

  assign shadow_full = &loaded_q;
  assign in_bank     = in_swap_i ? !active_q : active_q;
  assign swap        = push && in_swap_i;
  assign out_fire    = out_valid_o && out_ready_i;
  assign w_ready_o   = !shadow_full && (n_old_q == '0);
  assign w_fire      = w_valid_i && w_ready_o;

  // Rows leave in order and the old tile's rows are older than every row of the active
  // one. A swap needs a complete shadow bank, which was written only with n_old_q = 0, so
  // at a swap every row in flight is on the active bank and becomes the old tile's.
  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      active_q <= 1'b0;
      loaded_q <= '0;
      n_act_q  <= '0;
      n_old_q  <= '0;
    end else if (swap) begin
      active_q <= !active_q;
      loaded_q <= '0;
      n_old_q  <= n_act_q - ROW_CNT_W'(out_fire);
      n_act_q  <= ROW_CNT_W'(1);
    end else begin
      for (int c = 0; c < COLS; c++) begin
        if (w_fire && w_col_i == COL_W'(c)) loaded_q[c] <= 1'b1;
      end
      if (out_fire && n_old_q != '0) n_old_q <= n_old_q - 1'b1;
      n_act_q <= n_act_q + ROW_CNT_W'(push) - ROW_CNT_W'(out_fire && n_old_q == '0);
    end
  end

  // stored exponents per bank: column c, segment j at (c*SEGS + j)*EXP_BITS
  logic [COLS*SEGS*EXP_BITS-1:0] w_exp0_q, w_exp1_q;
  always_ff @(posedge clk_i) begin
    for (int c = 0; c < COLS; c++) begin
      if (w_fire && w_col_i == COL_W'(c)) begin
        if (active_q) w_exp0_q[SEGS*EXP_BITS*c +: SEGS*EXP_BITS] <= w_exps_i;
        else          w_exp1_q[SEGS*EXP_BITS*c +: SEGS*EXP_BITS] <= w_exps_i;
      end
    end
  end

  // ---- the PE grid, with row r's activation code delayed r cycles in front of it --------
  // Every PE's a_out / psum_out is its own signal (referenced as g_row[r].g_col[c].*), not
  // a slice of one wide bus: a simulator then wakes only the neighbours of a PE that moved.
  for (genvar r = 0; r < ROWS; r++) begin : g_row
    logic [CODE_W-1:0] a_skewed;               // the code entering PE (r, 0)
    logic              bank_skewed;            // and its row's weight bank
    if (r == 0) begin : g_no_skew
      assign a_skewed    = q_codes[0 +: CODE_W];
      assign bank_skewed = bank_head;
    end else begin : g_skew
      logic [r*CODE_W-1:0] sr;
      logic [r-1:0]        bank_sr;
      always_ff @(posedge clk_i) begin
        if (adv) begin
          sr[0 +: CODE_W] <= q_codes[CODE_W*r +: CODE_W];
          for (int i = 1; i < r; i++) sr[CODE_W*i +: CODE_W] <= sr[CODE_W*(i-1) +: CODE_W];
          bank_sr[0] <= bank_head;
          for (int i = 1; i < r; i++) bank_sr[i] <= bank_sr[i-1];
        end
      end
      assign a_skewed    = sr[CODE_W*(r-1) +: CODE_W];
      assign bank_skewed = bank_sr[r-1];
    end

    for (genvar c = 0; c < COLS; c++) begin : g_col
      logic [CODE_W-1:0]       a_in;
      logic                    bank_in;
      /* verilator lint_off UNUSEDSIGNAL */
      logic [CODE_W-1:0]       a_out;          // unused after the last column
      logic                    bank_out;
      /* verilator lint_on UNUSEDSIGNAL */
      logic signed [DOT_W-1:0] psum_in, psum_out;
      if (c == 0) begin : g_left
        assign a_in    = a_skewed;
        assign bank_in = bank_skewed;
      end else begin : g_inner
        assign a_in    = g_col[c-1].a_out;
        assign bank_in = g_col[c-1].bank_out;
      end
      if (r % BLOCK == 0) begin : g_top        // a segment starts a new block dot
        assign psum_in = '0;
      end else begin : g_chain
        assign psum_in = g_row[r-1].g_col[c].psum_out;
      end
      bfp_pe #(.MANT(MANT), .PSUM_W(DOT_W)) u_pe (
          .clk_i   (clk_i),
          .en_i    (adv),
          .w_load_i(w_fire && w_col_i == COL_W'(c)),
          .w_bank_i(!active_q),                // the shadow bank
          .w_code_i(w_codes_i[CODE_W*r +: CODE_W]),
          .a_i     (a_in),
          .bank_i  (bank_in),
          .a_o     (a_out),
          .bank_o  (bank_out),
          .psum_i  (psum_in),
          .psum_o  (psum_out)
      );
    end
  end

  // ---- activation block exponents (and the row's bank) along the skew -------------------
  // ea_h[(j*COLS + c)*EXP_BITS +: EXP_BITS]: segment j's exponent at the bottom of segment
  // j of column c, (j+1)*BLOCK + c cycles after the quantizer output, with its block dot;
  // bank_h[j*COLS + c]: the weight bank of the same row there
  logic [SEGS*COLS*EXP_BITS-1:0] ea_h;
  logic [SEGS*COLS-1:0]          bank_h;
  for (genvar j = 0; j < SEGS; j++) begin : g_aexp
    localparam int L = (j + 1) * BLOCK + COLS - 1;   // down the segment, then across
    logic [L*EXP_BITS-1:0] sr;
    logic [L-1:0]          bank_sr;
    always_ff @(posedge clk_i) begin
      if (adv) begin
        sr[0 +: EXP_BITS] <= q_exp[EXP_BITS*j +: EXP_BITS];
        for (int i = 1; i < L; i++) sr[EXP_BITS*i +: EXP_BITS] <= sr[EXP_BITS*(i-1) +: EXP_BITS];
        bank_sr[0] <= bank_head;
        for (int i = 1; i < L; i++) bank_sr[i] <= bank_sr[i-1];
      end
    end
    assign ea_h[EXP_BITS*COLS*j +: EXP_BITS*COLS] = sr[EXP_BITS*(L-COLS) +: EXP_BITS*COLS];
    assign bank_h[COLS*j +: COLS]                 = bank_sr[L-COLS +: COLS];
  end

  // ---- the fp32 accumulator down each column ----------------------------------------------
  for (genvar c = 0; c < COLS; c++) begin : g_acc
    logic [SEGS*32-1:0] acc_at;    // the accumulator arriving at the bottom of segment j
    logic [SEGS*32-1:0] sb_q;      // the accumulator leaving it (registered)

    // top of the column: in_acc_i[c] delayed BLOCK + c cycles (skew, then segment 0)
    localparam int LTOP = BLOCK + c;
    logic [LTOP*32-1:0] top_sr;
    always_ff @(posedge clk_i) begin
      if (adv) begin
        top_sr[31:0] <= acc_head[32*c +: 32];
        for (int i = 1; i < LTOP; i++) top_sr[32*i +: 32] <= top_sr[32*(i-1) +: 32];
      end
    end
    assign acc_at[31:0] = top_sr[32*(LTOP-1) +: 32];

    for (genvar j = 0; j < SEGS; j++) begin : g_seg
      localparam int RB = (j + 1) * BLOCK - 1;   // the segment's bottom row
      logic [EXP_BITS-1:0]      ea, ew;
      logic                     nan;
      logic signed [ESUM_W-1:0] esum;
      logic [31:0]              prod, sum, acc_q;

      assign ea   = ea_h[EXP_BITS*(COLS*j + c) +: EXP_BITS];
      assign ew   = bank_h[COLS*j + c] ? w_exp1_q[EXP_BITS*(SEGS*c + j) +: EXP_BITS]
                                       : w_exp0_q[EXP_BITS*(SEGS*c + j) +: EXP_BITS];
      assign nan  = (ea == NAN_EXP) || (ew == NAN_EXP);
      assign esum = nan ? '0 : ESUM_W'(int'(ea) + int'(ew) - 2 * BIAS);

      bfp_to_fp32 #(.MANT(MANT), .DOT_W(DOT_W), .ESUM_W(ESUM_W)) u_conv (
          .dot_i  (g_row[RB].g_col[c].psum_out),
          .esum_i (esum),
          .nan_i  (nan),
          .value_o(prod)
      );
      fp32_add u_add (.a_i(acc_at[32*j +: 32]), .b_i(prod), .sum_o(sum));

      always_ff @(posedge clk_i) begin
        if (adv) acc_q <= sum;
      end
      assign sb_q[32*j +: 32] = acc_q;

      // down to the next segment's bottom: BLOCK cycles in all, this register included
      if (j + 1 < SEGS) begin : g_down
        if (BLOCK == 1) begin : g_none
          assign acc_at[32*(j+1) +: 32] = sb_q[32*j +: 32];
        end else begin : g_delay
          logic [(BLOCK-1)*32-1:0] sr;
          always_ff @(posedge clk_i) begin
            if (adv) begin
              sr[31:0] <= sb_q[32*j +: 32];
              for (int i = 1; i < BLOCK - 1; i++) sr[32*i +: 32] <= sr[32*(i-1) +: 32];
            end
          end
          assign acc_at[32*(j+1) +: 32] = sr[32*(BLOCK-2) +: 32];
        end
      end
    end

    // de-skew: column c leaves the last segment COLS-1-c cycles before the last column
    if (c == COLS - 1) begin : g_out
      assign out_acc_o[32*c +: 32] = sb_q[32*(SEGS-1) +: 32];
    end else begin : g_deskew
      localparam int L = COLS - 1 - c;
      logic [L*32-1:0] sr;
      always_ff @(posedge clk_i) begin
        if (adv) begin
          sr[31:0] <= sb_q[32*(SEGS-1) +: 32];
          for (int i = 1; i < L; i++) sr[32*i +: 32] <= sr[32*(i-1) +: 32];
        end
      end
      assign out_acc_o[32*c +: 32] = sr[32*(L-1) +: 32];
    end
  end
endmodule
