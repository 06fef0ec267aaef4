// Sen's consultation page: a pre-call camera and microphone check, the waiting room, the
// consultation (local video, chat, mute, leave) and, for practitioners, admit, deny, remove
// and end. It speaks the signaling protocol v1 (services/telehealth/src/signaling.rs).
//
// The page is opened as /consult/{room}#grant=<join grant> (the grant stays in the fragment,
// which browsers never send to a server), or #token=<bearer token> to ask for the caller's own
// grant. Media: one RTCPeerConnection to the server's forwarding unit; the page offers its
// camera and microphone once admitted, and answers the server's offers (the others' tracks).
"use strict";

const TEXTS = {
  vi: {
    title: "Khám bệnh từ xa",
    other_language: "English",
    check_title: "Kiểm tra camera và micro",
    check_intro: "Cho phép trình duyệt dùng camera và micro, xem hình của bạn và nói thử để thấy mức âm thanh.",
    microphone: "Micro",
    check_button: "Kiểm tra thiết bị",
    join_button: "Vào phòng khám",
    waiting_title: "Phòng chờ",
    waiting_ahead: (n) => n === 0 ? "Bạn là người tiếp theo. Bác sĩ sẽ cho bạn vào." : `Có ${n} người trước bạn. Bác sĩ sẽ cho bạn vào.`,
    leave_button: "Rời phòng",
    you: "Bạn",
    remote_note: "Hình và tiếng của những người khác sẽ hiện ở đây.",
    mute_audio: "Tắt micro",
    unmute_audio: "Bật micro",
    mute_video: "Tắt camera",
    unmute_video: "Bật camera",
    end_button: "Kết thúc buổi khám",
    end_confirm: "Kết thúc buổi khám cho mọi người?",
    waiting_room: "Đang chờ",
    in_consultation: "Trong buổi khám",
    admit: "Cho vào",
    deny: "Từ chối",
    remove: "Mời ra",
    chat: "Trò chuyện",
    chat_placeholder: "Nhập tin nhắn…",
    send: "Gửi",
    roles: { patient: "Bệnh nhân", practitioner: "Bác sĩ", interpreter: "Phiên dịch", family: "Người nhà" },
    status_need_grant: "Liên kết này thiếu quyền vào phòng. Hãy mở liên kết mà phòng khám đã gửi.",
    status_devices_ok: "Camera và micro hoạt động.",
    status_devices_failed: "Không dùng được camera hoặc micro. Bạn vẫn có thể vào phòng để trò chuyện.",
    status_connecting: "Đang kết nối…",
    status_reconnecting: "Mất kết nối, đang kết nối lại…",
    status_admitted: "Bạn đã vào buổi khám.",
    status_media_failed: "Mất kết nối âm thanh, hình ảnh; đang thử lại…",
    quality: (q) => `Mất gói ${q.downlinkLossPct}% · trễ ${q.rttMs === null ? "?" : q.rttMs} ms`,
    closed: {
      1000: "Bạn đã rời phòng.",
      4000: "Kết nối bị từ chối (giao thức).",
      4001: "Quyền vào phòng không hợp lệ.",
      4002: "Quyền vào phòng đã hết hạn.",
      4003: "Quyền này dành cho phòng khác.",
      4004: "Bạn không còn được tham gia buổi khám này.",
      4005: "Buổi khám đã kết thúc.",
      4008: "Gửi quá nhiều tin nhắn; kết nối đã bị đóng.",
      other: "Kết nối đã đóng.",
    },
  },
  en: {
    title: "Remote consultation",
    other_language: "Tiếng Việt",
    check_title: "Camera and microphone check",
    check_intro: "Let the browser use your camera and microphone, check your picture and speak to see the sound level.",
    microphone: "Microphone",
    check_button: "Check devices",
    join_button: "Enter the consultation",
    waiting_title: "Waiting room",
    waiting_ahead: (n) => n === 0 ? "You are next. The doctor will let you in." : `${n} before you. The doctor will let you in.`,
    leave_button: "Leave",
    you: "You",
    remote_note: "The others' picture and sound show here.",
    mute_audio: "Mute microphone",
    unmute_audio: "Unmute microphone",
    mute_video: "Turn camera off",
    unmute_video: "Turn camera on",
    end_button: "End the consultation",
    end_confirm: "End the consultation for everyone?",
    waiting_room: "Waiting",
    in_consultation: "In the consultation",
    admit: "Admit",
    deny: "Deny",
    remove: "Remove",
    chat: "Chat",
    chat_placeholder: "Type a message…",
    send: "Send",
    roles: { patient: "Patient", practitioner: "Doctor", interpreter: "Interpreter", family: "Family" },
    status_need_grant: "This link carries no permission to enter. Open the link your clinic sent you.",
    status_devices_ok: "Camera and microphone work.",
    status_devices_failed: "The camera or microphone cannot be used. You can still enter and chat.",
    status_connecting: "Connecting…",
    status_reconnecting: "Connection lost, reconnecting…",
    status_admitted: "You are in the consultation.",
    status_media_failed: "Sound and video were lost; trying again…",
    quality: (q) => `Loss ${q.downlinkLossPct}% · round trip ${q.rttMs === null ? "?" : q.rttMs} ms`,
    closed: {
      1000: "You left.",
      4000: "The connection was refused (protocol).",
      4001: "The permission to enter is not valid.",
      4002: "The permission to enter has expired.",
      4003: "This permission is for another room.",
      4004: "You no longer take part in this consultation.",
      4005: "The consultation has ended.",
      4008: "Too many messages; the connection was closed.",
      other: "The connection closed.",
    },
  },
};

const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const params = new URLSearchParams(location.hash.slice(1));
// The fragment is read once and removed from the address bar and history.
history.replaceState(null, "", location.pathname + location.search);
let lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "vi";
const t = () => TEXTS[lang];
const $ = (id) => document.getElementById(id);

let grant = params.get("grant");
let me = null; // { participant, role, can }
let socket = null;
let stream = null;
let audioOn = true;
let videoOn = true;
let leaving = false;
let reconnectUntil = 0;
let ahead = null; // the place in the waiting room, while waiting
let closedCode = null; // how the connection ended, once it has
let pc = null; // the media connection to the server
let mediaOpened = 0; // media connections opened (more than one: the server lost one)
let lastReopen = 0; // when a no-media error last made the page open its media again
let iceServers = [];
let mediaQueue = Promise.resolve(); // negotiation messages, handled one after the other
const remotes = new Map(); // participant -> its video element
const people = new Map(); // participant -> role, admitted
const waiting = new Map(); // participant -> role

function render() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-text]").forEach((el) => {
    const value = t()[el.dataset.text];
    if (typeof value === "string") el.textContent = value;
  });
  document.querySelectorAll("[data-placeholder]").forEach((el) => {
    el.placeholder = t()[el.dataset.placeholder];
  });
  $("mute-audio").textContent = audioOn ? t().mute_audio : t().unmute_audio;
  $("mute-video").textContent = videoOn ? t().mute_video : t().unmute_video;
  paintStatus();
  if (ahead !== null) $("waiting-detail").textContent = t().waiting_ahead(ahead);
  if (closedCode !== null) $("over-title").textContent = t().closed[closedCode] || t().closed.other;
  renderPeople();
}

// What the status line says: text keys (shown in the current language, again after a
// switch) or, for the server's own messages, their text.
let shown = { keys: [], raw: "", error: false };

function status(keys, isError) {
  shown = { keys: [].concat(keys || []), raw: "", error: Boolean(isError) };
  paintStatus();
}

function statusRaw(text, isError) {
  shown = { keys: [], raw: text, error: Boolean(isError) };
  paintStatus();
}

function paintStatus() {
  $("status").textContent = shown.raw || shown.keys.map((key) => t()[key]).join(" ");
  $("status").classList.toggle("error", shown.error);
}

function show(section) {
  for (const id of ["check", "waiting", "call", "over"]) $(id).hidden = id !== section;
}

function roleName(role) {
  return t().roles[role] || role;
}

function button(text, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function renderPeople() {
  const canAdmit = me && me.can && me.can.admit;
  $("practitioner").hidden = !canAdmit;
  $("end").hidden = !(me && me.can && me.can.end);
  if (!canAdmit) return;
  const list = $("waiting-list");
  list.replaceChildren();
  for (const [participant, role] of waiting) {
    const li = document.createElement("li");
    li.append(roleName(role) + " ");
    li.append(button(t().admit, "", () => send({ type: "admit", participant })));
    li.append(button(t().deny, "secondary", () => send({ type: "deny", participant })));
    list.append(li);
  }
  const present = $("present-list");
  present.replaceChildren();
  for (const [participant, role] of people) {
    const li = document.createElement("li");
    li.append(roleName(role) + " ");
    li.append(button(t().remove, "secondary", () => send({ type: "remove", participant })));
    present.append(li);
  }
}

async function checkDevices() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    $("preview").srcObject = stream;
    $("local").srcObject = stream;
    const context = new AudioContext();
    const analyser = context.createAnalyser();
    context.createMediaStreamSource(stream).connect(analyser);
    const samples = new Uint8Array(analyser.fftSize);
    const tick = () => {
      analyser.getByteTimeDomainData(samples);
      let peak = 0;
      for (const s of samples) peak = Math.max(peak, Math.abs(s - 128));
      $("level").style.width = Math.min(100, (peak / 128) * 200) + "%";
      requestAnimationFrame(tick);
    };
    tick();
    status("status_devices_ok");
  } catch (e) {
    status("status_devices_failed", true);
  }
  $("join").disabled = !grant;
}

async function grantFromToken(token) {
  const response = await fetch(`/telehealth/v1/rooms/${encodeURIComponent(room)}/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: "{}",
  });
  const body = await response.json();
  if (!response.ok) throw new Error((body.issue && body.issue[0] && body.issue[0].diagnostics) || response.status);
  return body.token;
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function chatLine(from, text) {
  const p = document.createElement("p");
  const who = document.createElement("strong");
  who.textContent = from === me.participant ? t().you : roleName(people.get(from) || "") || from;
  p.append(who, ": ", text); // text nodes: nothing from a message is ever HTML
  $("chat-log").append(p);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
}

function admitted(present) {
  ahead = null;
  show("call");
  status("status_admitted");
  for (const p of present || []) people.set(p.participant, p.role);
  renderPeople();
  startMedia();
}

// Opens the media connection, or, when the page still has a live one (a dropped signaling
// connection came back), asks the server for an ICE restart.
function startMedia() {
  if (pc && pc.connectionState !== "closed" && pc.connectionState !== "failed") {
    send({ type: "restart" });
    return;
  }
  if (pc) pc.close();
  pc = new RTCPeerConnection({ iceServers });
  mediaOpened += 1;
  if (stream) {
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
  } else {
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
  }
  pc.addEventListener("icecandidate", (event) =>
    send({ type: "ice", candidate: event.candidate ? event.candidate.toJSON() : null }),
  );
  pc.addEventListener("track", (event) => {
    const from = event.streams[0];
    if (!from) return;
    let video = remotes.get(from.id);
    if (!video) {
      video = remotes.size === 0 ? $("remote") : document.createElement("video");
      video.autoplay = true;
      video.playsInline = true;
      if (video.id !== "remote") $("remote").parentElement.append(video);
      remotes.set(from.id, video);
      document.querySelector(".remote-note").hidden = true;
    }
    video.srcObject = from;
    // Entering was the user's gesture: sound may play. Should the browser still refuse,
    // a tap on the video starts it.
    video.play().catch(() => video.addEventListener("click", () => video.play(), { once: true }));
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed") {
      status("status_media_failed", true);
      send({ type: "restart" });
    }
  });
  const current = pc;
  mediaQueue = mediaQueue.then(async () => {
    const offer = await current.createOffer();
    await current.setLocalDescription(offer);
    send({ type: "offer", sdp: offer.sdp });
  });
}

// Drops the media connection and opens a new one (the server lost the old one).
function reopenMedia() {
  pc.close();
  for (const video of remotes.values()) video.srcObject = null;
  startMedia();
}

// One negotiation message of the server's, after those before it.
function negotiate(m) {
  mediaQueue = mediaQueue
    .then(async () => {
      if (!pc) return;
      if (m.type === "answer") await pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
      if (m.type === "offer") {
        await pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        send({ type: "answer", sdp: answer.sdp });
      }
      if (m.type === "ice" && m.candidate) await pc.addIceCandidate(m.candidate);
    })
    .catch((e) => statusRaw(String(e.message || e), true));
}

function forget(participant) {
  const video = remotes.get(participant);
  if (!video) return;
  video.srcObject = null;
  if (video.id !== "remote") video.remove();
  remotes.delete(participant);
}

// For tests and support: the media connection, how many were opened, and the video frames
// decoded of the others.
window.senMedia = () => pc;
window.senMediaOpened = () => mediaOpened;
window.senFramesDecoded = async () => {
  let frames = 0;
  if (pc) {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0;
    });
  }
  return frames;
};

function connect() {
  status("status_connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/telehealth/v1/ws`);
  socket.addEventListener("open", () => send({ type: "join", v: 1, room, grant }));
  socket.addEventListener("message", (event) => {
    const m = JSON.parse(event.data);
    switch (m.type) {
      case "joined":
        me = { participant: m.participant, role: m.role, can: null };
        iceServers = m.iceServers || [];
        try {
          me.can = JSON.parse(atob(grant.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).can;
        } catch (e) {
          me.can = {};
        }
        reconnectUntil = 0;
        if (m.state === "admitted") {
          for (const w of m.waiting || []) waiting.set(w.participant, w.role);
          admitted(m.participants);
        } else {
          show("waiting");
          status([]);
          ahead = m.ahead || 0;
          render();
        }
        break;
      case "admitted":
        admitted(m.participants);
        break;
      case "participant":
        if (m.event === "waiting") waiting.set(m.participant, m.role);
        if (m.event === "joined") {
          waiting.delete(m.participant);
          people.set(m.participant, m.role);
        }
        if (m.event === "left" || m.event === "removed") {
          people.delete(m.participant);
          waiting.delete(m.participant);
          forget(m.participant);
        }
        renderPeople();
        break;
      case "chat":
        chatLine(m.from, m.text);
        break;
      case "answer":
      case "offer":
      case "ice":
        negotiate(m);
        break;
      case "media":
        if (m.state === "connected") status("status_admitted");
        // The room's node died and another took the room: the connection is gone, open anew.
        if (m.state === "moved" && pc) reopenMedia();
        break;
      case "quality":
        $("quality").textContent = t().quality(m);
        break;
      case "error":
        // The server has no media connection of ours (the room moved while we were away).
        // Once per 10 s at most: a server that cannot open one must not be asked in a loop.
        if (m.code === "no-media" && pc && Date.now() - lastReopen > 10000) {
          lastReopen = Date.now();
          reopenMedia();
          break;
        }
        statusRaw(m.message, true);
        break;
    }
  });
  socket.addEventListener("close", (event) => {
    const texts = t().closed;
    // A dropped connection comes back within 30 s with the same grant, straight to its place.
    if (!leaving && event.code < 4000 && event.code !== 1000 && event.code !== 1009) {
      if (!reconnectUntil) reconnectUntil = Date.now() + 30000;
      if (Date.now() < reconnectUntil) {
        status("status_reconnecting", true);
        setTimeout(connect, 1000);
        return;
      }
    }
    show("over");
    closedCode = event.code;
    $("over-title").textContent = texts[event.code] || texts.other;
    status([]);
    if (stream) stream.getTracks().forEach((track) => track.stop());
    if (pc) pc.close();
  });
}

$("lang").addEventListener("click", () => {
  lang = lang === "vi" ? "en" : "vi";
  render();
});
$("check-devices").addEventListener("click", checkDevices);
$("join").addEventListener("click", () => connect());
document.querySelectorAll("[data-action=leave]").forEach((b) =>
  b.addEventListener("click", () => {
    leaving = true;
    send({ type: "leave" });
  }),
);
$("end").addEventListener("click", () => {
  if (confirm(t().end_confirm)) send({ type: "end" });
});
$("mute-audio").addEventListener("click", () => {
  audioOn = !audioOn;
  if (stream) stream.getAudioTracks().forEach((track) => (track.enabled = audioOn));
  send({ type: "mute", audio: !audioOn, video: !videoOn });
  render();
});
$("mute-video").addEventListener("click", () => {
  videoOn = !videoOn;
  if (stream) stream.getVideoTracks().forEach((track) => (track.enabled = videoOn));
  send({ type: "mute", audio: !audioOn, video: !videoOn });
  render();
});
$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (text) send({ type: "chat", text });
  $("chat-input").value = "";
});
// Keep the place while connected.
setInterval(() => send({ type: "ping" }), 10000);

render();
(async () => {
  if (!grant && params.get("token")) {
    try {
      grant = await grantFromToken(params.get("token"));
    } catch (e) {
      statusRaw(String(e.message || e), true);
    }
  }
  if (!grant) status("status_need_grant", true);
  $("join").disabled = !grant;
})();
