// The graph component: the pyvis page (kb.graph.render_html) in an iframe; a clicked node comes
// back to Python as the trigger value "clicked". The iframe is only reloaded when the graph
// changes (data.key), so a rerun keeps the layout and the zoom.
export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  let frame = parentElement.querySelector("iframe");
  if (!frame) {
    frame = document.createElement("iframe");
    frame.title = "Knowledge graph";
    frame.style.width = "100%";
    frame.style.border = "0";
    parentElement.appendChild(frame);
  }
  frame.style.height = `${data.height}px`;
  if (frame.dataset.key !== data.key) {
    frame.dataset.key = data.key;
    frame.srcdoc = data.html;
  }
  const onMessage = (event) => {
    if (event.source === frame.contentWindow && event.data && event.data.nesyGraphNode) {
      setTriggerValue("clicked", event.data.nesyGraphNode);
    }
  };
  window.addEventListener("message", onMessage);
  return () => window.removeEventListener("message", onMessage);
}
